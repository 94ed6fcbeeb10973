//! Where data lives: local paths and object-store URLs, resolved to an [`ObjectStore`].
//!
//! A [`Location`] is a folder-like place (`/data/out`, `s3://bucket/job-1`) that outputs are
//! written under; an [`InputFile`] is one Parquet file found by [`resolve_inputs`] from what the
//! user typed: a file, a directory or prefix, or a glob.
//!
//! Credentials and endpoints come from the environment, the way each cloud's own tools read
//! them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP` for S3 and S3-compatible servers; `GOOGLE_SERVICE_ACCOUNT`, … for GCS;
//! `AZURE_STORAGE_ACCOUNT_NAME`, … for Azure.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use globset::{GlobBuilder, GlobMatcher};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::upload::Upload;

/// Errors reaching or listing storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("`{input}` is not a usable location: {reason}")]
    BadLocation { input: String, reason: String },
    #[error(
        "unsupported URL scheme `{scheme}` in `{input}` (use a local path, file://, s3://, gs:// or az://)"
    )]
    UnsupportedScheme { input: String, scheme: String },
    #[error("no Parquet files found at `{input}`")]
    NoFiles { input: String },
    #[error("`{file}` is listed twice in the inputs")]
    DuplicateInput { file: String },
    #[error("{action} `{url}`: {source}")]
    Store {
        action: &'static str,
        url: String,
        #[source]
        source: object_store::Error,
    },
}

impl StorageError {
    pub fn store(
        action: &'static str,
        url: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        StorageError::Store {
            action,
            url: url.into(),
            source,
        }
    }
}

/// A folder-like place in local storage or an object store.
#[derive(Clone)]
pub struct Location {
    /// The store that holds everything under this location.
    store: Arc<dyn ObjectStore>,
    /// How a person writes this location: an absolute local path or a URL without credentials.
    display: String,
    /// The root of this location inside `store`.
    prefix: Path,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Location")
            .field("display", &self.display)
            .finish()
    }
}

/// `a/./b/../c` → `a/c`, lexically (object-store paths have no `.` or `..` segments).
fn without_dot_segments(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl Location {
    /// Parses a local path (relative or absolute) or a `file://`, `s3://`, `gs://` or `az://` URL.
    pub fn parse(input: &str) -> Result<Self, StorageError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(StorageError::BadLocation {
                input: input.into(),
                reason: "it is empty".into(),
            });
        }
        match Url::parse(input) {
            // A single letter "scheme" is a Windows drive, not a URL; treat it as a path.
            Ok(url) if url.scheme().len() > 1 => Self::from_url(input, &url),
            _ => Self::local(input),
        }
    }

    fn local(input: &str) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadLocation {
            input: input.into(),
            reason,
        };
        let path = std::path::absolute(input).map_err(|e| bad(e.to_string()))?;
        let path = without_dot_segments(&path);
        let prefix = Path::from_absolute_path(&path).map_err(|e| bad(e.to_string()))?;
        let display = path.to_string_lossy().trim_end_matches('/').to_string();
        Ok(Location {
            store: Arc::new(LocalFileSystem::new()),
            display: if display.is_empty() {
                "/".into()
            } else {
                display
            },
            prefix,
        })
    }

    fn from_url(input: &str, url: &Url) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadLocation {
            input: input.into(),
            reason,
        };
        let store_err = |e: object_store::Error| bad(e.to_string());
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| bad("not a local file URL".into()))?;
                return Self::local(&path.to_string_lossy());
            }
            "s3" | "s3a" => Arc::new(
                AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(store_err)?,
            ),
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(store_err)?,
            ),
            "az" | "abfs" | "abfss" | "azure" | "adl" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(store_err)?,
            ),
            other => {
                return Err(StorageError::UnsupportedScheme {
                    input: input.into(),
                    scheme: other.into(),
                });
            }
        };
        let prefix = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
        let host = url.host_str().unwrap_or_default();
        let display = format!("{}://{}/{}", url.scheme(), host, prefix)
            .trim_end_matches('/')
            .to_string();
        Ok(Location {
            store,
            display,
            prefix,
        })
    }

    /// The store that holds this location.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The root of this location inside [`Location::store`].
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The location as a person writes it.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The path of `relative` (`"scores/part-00001.parquet"`) under this location.
    pub fn path_of(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// How a person writes the object at `path` (which lies in this location's store).
    pub fn display_of(&self, path: &Path) -> String {
        display_in(&self.display, &self.prefix, path)
    }

    /// A sub-location, e.g. `scores/` of an output location.
    pub fn join(&self, relative: &str) -> Location {
        let prefix = self.path_of(relative);
        Location {
            store: Arc::clone(&self.store),
            display: self.display_of(&prefix),
            prefix,
        }
    }

    /// Every object under this location, recursively, sorted by path.
    pub async fn list_all(&self) -> Result<Vec<object_store::ObjectMeta>, StorageError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut objects: Vec<_> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| StorageError::store("listing", &self.display, e))?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }

    /// Writes `bytes` to `relative` in one atomic put: readers see the whole object or none.
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let path = self.path_of(relative);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| StorageError::store("writing", self.display_of(&path), e))?;
        Ok(())
    }

    /// Reads the whole object at `relative`; `Ok(None)` when it does not exist.
    pub async fn get_if_exists(&self, relative: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path_of(relative);
        match self.store.get(&path).await {
            Ok(result) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| StorageError::store("reading", self.display_of(&path), e))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store("reading", self.display_of(&path), e)),
        }
    }

    /// The object at `relative`, as an input file (for reading back what a job wrote).
    pub async fn input_file(&self, relative: &str) -> Result<InputFile, StorageError> {
        let path = self.path_of(relative);
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| StorageError::store("reading", self.display_of(&path), e))?;
        Ok(input_file(self, meta))
    }

    /// Copies the object `relative` of `from` to `relative` under this location, a few MiB at a
    /// time (the two may be in different stores). The copy appears only once complete.
    pub async fn copy_from(&self, from: &Location, relative: &str) -> Result<(), StorageError> {
        let target = self.path_of(relative);
        let mut chunks = ChunkedRead::open(from, from.path_of(relative), COPY_CHUNK_BYTES).await?;
        let mut upload = Upload::new(Arc::clone(&self.store), target.clone());
        let write_err = |e| StorageError::store("writing", self.display_of(&target), e);
        while let Some(bytes) = chunks.next().await? {
            upload.put(bytes).await.map_err(write_err)?;
        }
        upload.finish().await.map_err(write_err)?;
        Ok(())
    }

    /// Deletes every object under `relative` (a file or a folder); missing objects are fine.
    pub async fn delete_all(&self, relative: &str) -> Result<usize, StorageError> {
        let target = self.join(relative);
        let mut objects = target.list_all().await?;
        if objects.is_empty() {
            // `relative` may name a single object rather than a folder.
            if let Ok(meta) = self.store.head(&target.prefix).await {
                objects.push(meta);
            }
        }
        for meta in &objects {
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(StorageError::store(
                        "deleting",
                        self.display_of(&meta.location),
                        e,
                    ));
                }
            }
        }
        // The local file system keeps emptied folders, and the staging files of writes that
        // were interrupted (`NAME#N`, which listing does not show); remove them too.
        if self.is_local() {
            let target_path = std::path::Path::new(&target.display);
            if target_path.is_dir() {
                let _ = std::fs::remove_dir_all(target_path);
            }
            if let (Some(parent), Some(name)) = (target_path.parent(), target_path.file_name())
                && let Ok(entries) = std::fs::read_dir(parent)
            {
                let staged = format!("{}#", name.to_string_lossy());
                for entry in entries.flatten() {
                    let file = entry.file_name();
                    if is_staging_name(&file) && file.to_string_lossy().starts_with(&staged) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            // Folders emptied on the way up, short of this location itself (an object store
            // has no folders to leave behind).
            let root = std::path::Path::new(&self.display);
            let mut parent = target_path.parent();
            while let Some(folder) = parent.filter(|p| p.starts_with(root) && *p != root) {
                if std::fs::remove_dir(folder).is_err() {
                    break;
                }
                parent = folder.parent();
            }
        }
        Ok(objects.len())
    }

    /// Removes, under `relative` of a local location, the staging files an interrupted write
    /// left (`NAME#N`: the local store writes there first and renames when complete). Other
    /// stores show nothing before a write completes. Returns how many went.
    pub fn remove_staging_files(&self, relative: &str) -> usize {
        if !self.is_local() {
            return 0;
        }
        let mut removed = 0;
        let mut folders = vec![std::path::PathBuf::from(self.join(relative).display())];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => folders.push(path),
                    Ok(t) if t.is_file() && is_staging_name(&entry.file_name()) => {
                        removed += usize::from(std::fs::remove_file(&path).is_ok());
                    }
                    _ => {}
                }
            }
        }
        removed
    }

    /// Fails when this location cannot be a folder to write in: on a local disk, it or a
    /// folder above it is a file.
    pub fn check_folder(&self) -> Result<(), StorageError> {
        if !self.is_local() {
            return Ok(());
        }
        let mut path = Some(std::path::Path::new(&self.display));
        while let Some(p) = path {
            if p.is_file() {
                return Err(StorageError::BadLocation {
                    input: self.display.clone(),
                    reason: format!("{} is a file, not a folder", p.display()),
                });
            }
            path = p.parent();
        }
        Ok(())
    }

    /// Moves the object `from` to `to` (both relative to this location), replacing `to`:
    /// a rename on a local disk, a copy and delete in an object store.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (source, target) = (self.path_of(from), self.path_of(to));
        self.store
            .rename(&source, &target)
            .await
            .map_err(|e| StorageError::store("moving", self.display_of(&source), e))
    }

    /// Whether the object `relative` exists.
    pub async fn exists(&self, relative: &str) -> Result<bool, StorageError> {
        let path = self.path_of(relative);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StorageError::store("reading", self.display_of(&path), e)),
        }
    }

    /// Whether this location is on the local file system.
    pub fn is_local(&self) -> bool {
        self.display.starts_with('/')
    }
}

/// Bytes read at once by [`Location::copy_from`].
const COPY_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// One object read from start to end, in chunks. A remote object is streamed: one request, in
/// the pieces the network delivers. A local file is read `chunk_bytes` at a time, as ranges of
/// it: the local store's own stream reads 8 KiB at a time, each read a hand-off to a blocking
/// thread, which costs more in thread switches than the reading itself.
pub struct ChunkedRead {
    display: String,
    chunks: Chunks,
}

enum Chunks {
    Ranges {
        store: Arc<dyn ObjectStore>,
        path: Path,
        size: u64,
        /// How far the file has been read.
        read: u64,
        chunk_bytes: u64,
    },
    Stream(BoxStream<'static, object_store::Result<Bytes>>),
}

impl ChunkedRead {
    /// Starts reading the object at `path` of `location` (a local file `chunk_bytes` at a
    /// time, at least one byte).
    pub async fn open(
        location: &Location,
        path: Path,
        chunk_bytes: u64,
    ) -> Result<Self, StorageError> {
        let display = location.display_of(&path);
        let read_err = |e| StorageError::store("reading", display.clone(), e);
        let store = Arc::clone(&location.store);
        let chunks = if location.is_local() {
            let size = store.head(&path).await.map_err(read_err)?.size;
            Chunks::Ranges {
                store,
                path,
                size,
                read: 0,
                chunk_bytes: chunk_bytes.max(1),
            }
        } else {
            Chunks::Stream(store.get(&path).await.map_err(read_err)?.into_stream())
        };
        Ok(ChunkedRead { display, chunks })
    }

    /// The next chunk, or `None` at the end of the object.
    pub async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        let chunk = match &mut self.chunks {
            Chunks::Ranges { read, size, .. } if read == size => return Ok(None),
            Chunks::Ranges {
                store,
                path,
                size,
                read,
                chunk_bytes,
            } => {
                let end = (*size).min(*read + *chunk_bytes);
                let chunk = store.get_range(path, *read..end).await;
                *read = end;
                chunk.map(Some)
            }
            Chunks::Stream(stream) => stream.try_next().await,
        };
        chunk.map_err(|e| StorageError::store("reading", self.display.clone(), e))
    }
}

/// `NAME#N`: a file the local store is still writing (or was, when interrupted).
fn is_staging_name(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy()
        .rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn display_in(root_display: &str, root: &Path, path: &Path) -> String {
    match path.prefix_match(root) {
        Some(parts) => {
            let rest: Vec<_> = parts.map(|p| p.as_ref().to_string()).collect();
            if rest.is_empty() {
                root_display.to_string()
            } else {
                format!("{}/{}", root_display.trim_end_matches('/'), rest.join("/"))
            }
        }
        None => path.to_string(),
    }
}

/// One input Parquet file.
#[derive(Clone)]
pub struct InputFile {
    /// The store that holds the file.
    pub store: Arc<dyn ObjectStore>,
    /// The file's path inside `store`.
    pub path: Path,
    /// The file as a person writes it; this is the `source_file` of its rows.
    pub display: String,
    /// Size in bytes, known from listing; lets the Parquet footer be read in one request.
    pub size: u64,
    /// The object's version as listed: its ETag, else its modification time. A file
    /// rewritten in place gets another, so a job over it is another job. `None` when the
    /// file was named without asking the store.
    pub version: Option<String>,
}

impl InputFile {
    /// The file at `url` (an absolute local path or object-store URL, as `display` shows it)
    /// of `size` bytes, without asking the store.
    pub fn from_url(url: &str, size: u64) -> Result<Self, StorageError> {
        let location = Location::parse(url)?;
        Ok(InputFile {
            store: location.store,
            path: location.prefix,
            display: location.display,
            size,
            version: None,
        })
    }
}

impl InputFile {
    /// The file at `url` as the store lists it now (size and version); `None` when it is gone.
    pub async fn stat(url: &str) -> Result<Option<Self>, StorageError> {
        let location = Location::parse(url)?;
        match location.store.head(&location.prefix).await {
            Ok(meta) => Ok(Some(input_file(&location, meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store("reading", location.display(), e)),
        }
    }
}

impl fmt::Debug for InputFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputFile")
            .field("display", &self.display)
            .field("size", &self.size)
            .finish()
    }
}

/// Turns what the user typed for `--input` into the Parquet files it names, in a stable order.
///
/// Each spec is a file, a directory or prefix (every `*.parquet` beneath it, recursively), or a
/// glob (`data/train-*.parquet`, `s3://bucket/ds/**/*.parquet`). Files keep the order of the
/// specs; within one spec they are sorted by path. Naming a file twice is an error, since its
/// rows would be counted twice.
pub async fn resolve_inputs(specs: &[String]) -> Result<Vec<InputFile>, StorageError> {
    let mut files: Vec<InputFile> = Vec::new();
    for spec in specs {
        for file in resolve_one(spec).await? {
            if files.iter().any(|f| f.display == file.display) {
                return Err(StorageError::DuplicateInput { file: file.display });
            }
            files.push(file);
        }
    }
    Ok(files)
}

async fn resolve_one(spec: &str) -> Result<Vec<InputFile>, StorageError> {
    if let Some(glob_at) = spec.find(['*', '?', '[', '{']) {
        let base_end = spec[..glob_at].rfind('/').map_or(0, |i| i + 1);
        let base_spec = if base_end == 0 {
            "."
        } else {
            &spec[..base_end]
        };
        let base = Location::parse(base_spec)?;
        let matcher = glob_matcher(spec, &spec[base_end..])?;
        let files: Vec<InputFile> = glob_candidates(&base, spec, &spec[base_end..])
            .await?
            .into_iter()
            .filter(|meta| {
                let relative = base.display_of(&meta.location);
                let relative = relative
                    .strip_prefix(base.display())
                    .unwrap_or(&relative)
                    .trim_start_matches('/');
                matcher.is_match(relative)
            })
            .map(|meta| input_file(&base, meta))
            .collect();
        return non_empty(spec, files);
    }

    let location = Location::parse(spec)?;
    // A bucket root or a local directory is a folder; anything else may be one file.
    let is_folder = location.prefix.as_ref().is_empty()
        || (location.is_local() && std::path::Path::new(location.display()).is_dir());
    if !is_folder {
        match location.store.head(&location.prefix).await {
            Ok(meta) => return Ok(vec![input_file(&location, meta)]),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StorageError::store("reading", location.display(), e)),
        }
    }
    let files = location
        .list_all()
        .await?
        .into_iter()
        .filter(|meta| meta.location.as_ref().ends_with(".parquet"))
        .map(|meta| input_file(&location, meta))
        .collect();
    non_empty(spec, files)
}

/// Why an output location cannot be used with the input `spec`, if it cannot: the output is the
/// input's folder or lies inside it where the input would find the job's Parquet files on the
/// next run, or the input lies inside one of the outputs a job replaces.
pub fn output_conflict(spec: &str, output: &Location) -> Result<Option<String>, StorageError> {
    let (base_spec, pattern) = match spec.find(['*', '?', '[', '{']) {
        Some(glob_at) => {
            let base_end = spec[..glob_at].rfind('/').map_or(0, |i| i + 1);
            let base = if base_end == 0 {
                "."
            } else {
                &spec[..base_end]
            };
            (base, Some(glob_matcher(spec, &spec[base_end..])?))
        }
        None => (spec, None),
    };
    let base = Location::parse(base_spec)?;
    let (input, out) = (base.display(), output.display());
    let under = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(str::to_string)
    };
    if input == out {
        return Ok(Some(format!(
            "--output {out} is the input `{spec}` itself: write the outputs somewhere else"
        )));
    }
    if let Some(inside) = under(out, input) {
        // What the job writes there, as the input would see it on the next run.
        let written = crate::outputs::JOB_OUTPUTS
            .iter()
            .map(|name| format!("{inside}/{name}/part-00000.parquet"))
            .chain(
                ["ranking.parquet", "rejected_rows.parquet"].map(|name| format!("{inside}/{name}")),
            );
        let read_back = match &pattern {
            None => true,
            Some(matcher) => written.into_iter().any(|path| matcher.is_match(&path)),
        };
        if read_back {
            return Ok(Some(format!(
                "--output {out} lies inside the input `{spec}`: the next run would read the \
                 job's own outputs as input; choose an output outside it"
            )));
        }
    }
    if let Some(inside) = under(input, out) {
        let top = inside.split('/').next().unwrap_or_default();
        if crate::outputs::JOB_OUTPUTS.contains(&top) {
            return Ok(Some(format!(
                "the input `{spec}` lies inside {out}/{top}, which the job writes: it would \
                 replace its own input; choose another --output"
            )));
        }
    }
    Ok(None)
}

/// The objects under `base` that `pattern` may match, sorted by path. Only the folders the
/// pattern can reach are listed, level by level (`data/train-*.parquet` lists `data/` alone,
/// not its subfolders); a pattern with `**` lists everything beneath `base`.
async fn glob_candidates(
    base: &Location,
    spec: &str,
    pattern: &str,
) -> Result<Vec<object_store::ObjectMeta>, StorageError> {
    if pattern.contains("**") {
        return base.list_all().await;
    }
    let segments: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let mut folders = vec![base.prefix.clone()];
    let mut found = Vec::new();
    for (depth, segment) in segments.iter().enumerate() {
        let matcher = glob_matcher(spec, segment)?;
        let last = depth + 1 == segments.len();
        let mut next = Vec::new();
        for folder in &folders {
            let listing = base
                .store
                .list_with_delimiter((!folder.as_ref().is_empty()).then_some(folder))
                .await
                .map_err(|e| StorageError::store("listing", base.display_of(folder), e))?;
            if last {
                found.extend(
                    listing
                        .objects
                        .into_iter()
                        .filter(|o| o.location.filename().is_some_and(|n| matcher.is_match(n))),
                );
            } else {
                next.extend(
                    listing
                        .common_prefixes
                        .into_iter()
                        .filter(|p| p.filename().is_some_and(|n| matcher.is_match(n))),
                );
            }
        }
        folders = next;
    }
    found.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(found)
}

fn glob_matcher(spec: &str, pattern: &str) -> Result<GlobMatcher, StorageError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|e| StorageError::BadLocation {
            input: spec.into(),
            reason: format!("invalid glob: {e}"),
        })
}

fn input_file(location: &Location, meta: object_store::ObjectMeta) -> InputFile {
    InputFile {
        store: Arc::clone(&location.store),
        display: location.display_of(&meta.location),
        // Stores quote an ETag in one answer and not in another (Azure: listing vs HEAD).
        version: meta
            .e_tag
            .as_deref()
            .map(|tag| tag.trim_start_matches("W/").trim_matches('"').to_string())
            .or_else(|| Some(meta.last_modified.to_rfc3339())),
        path: meta.location,
        size: meta.size,
    }
}

fn non_empty(spec: &str, files: Vec<InputFile>) -> Result<Vec<InputFile>, StorageError> {
    if files.is_empty() {
        Err(StorageError::NoFiles { input: spec.into() })
    } else {
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_absolute() {
        let loc = Location::parse("some/dir/").unwrap();
        assert!(loc.display().starts_with('/'));
        assert!(loc.display().ends_with("some/dir"));
        let child = loc.join("scores");
        assert!(child.display().ends_with("some/dir/scores"));
        // `.` and `..` are resolved, as a shell user expects of `../data`.
        let loc = Location::parse("/a/./b/../c/").unwrap();
        assert_eq!(loc.display(), "/a/c");
        assert_eq!(loc.prefix().as_ref(), "a/c");
    }

    #[test]
    fn cloud_urls_keep_their_scheme_and_bucket() {
        let loc = Location::parse("s3://bucket/a/b").unwrap();
        assert_eq!(loc.display(), "s3://bucket/a/b");
        assert_eq!(loc.prefix().as_ref(), "a/b");
        assert_eq!(
            loc.display_of(&loc.path_of("scores/part-1.parquet")),
            "s3://bucket/a/b/scores/part-1.parquet"
        );
    }

    #[test]
    fn unknown_scheme_is_a_clear_error() {
        let err = Location::parse("ftp://host/x").unwrap_err();
        assert!(
            err.to_string().contains("unsupported URL scheme `ftp`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn resolves_files_dirs_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.parquet", "a.parquet", "sub/c.parquet", "notes.txt"] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let root = dir.path().to_string_lossy().to_string();
        let names = |files: Vec<InputFile>| -> Vec<String> {
            files
                .iter()
                .map(|f| f.display.strip_prefix(&root).unwrap().to_string())
                .collect()
        };
        let all = resolve_inputs(std::slice::from_ref(&root)).await.unwrap();
        assert_eq!(names(all), ["/a.parquet", "/b.parquet", "/sub/c.parquet"]);
        let glob = resolve_inputs(&[format!("{root}/*.parquet")])
            .await
            .unwrap();
        assert_eq!(names(glob), ["/a.parquet", "/b.parquet"]);
        let one = resolve_inputs(&[format!("{root}/b.parquet")])
            .await
            .unwrap();
        assert_eq!(names(one), ["/b.parquet"]);
        let twice = resolve_inputs(&[format!("{root}/b.parquet"), root.clone()]).await;
        assert!(matches!(twice, Err(StorageError::DuplicateInput { .. })));
        let none = resolve_inputs(&[format!("{root}/*.csv")]).await;
        assert!(matches!(none, Err(StorageError::NoFiles { .. })));
    }

    #[test]
    fn an_output_must_not_overlap_its_input() {
        let out = |p: &str| Location::parse(p).unwrap();
        let conflict = |spec: &str, o: &str| output_conflict(spec, &out(o)).unwrap();
        assert!(conflict("/d/data", "/d/data").is_some());
        assert!(conflict("/d/data", "/d/data/out").is_some());
        assert!(conflict("/d/data/", "/d/data/a/b").is_some());
        assert!(conflict("/d/data", "/d/data-2").is_none());
        assert!(conflict("/d/data", "/d/out").is_none());
        // A glob that cannot match what the job writes there.
        assert!(conflict("/d/data/train-*.parquet", "/d/data/out").is_none());
        assert!(conflict("/d/data/**/*.parquet", "/d/data/out").is_some());
        // An input inside what the job writes, or beside it.
        assert!(conflict("/d/out/scores", "/d/out").is_some());
        assert!(conflict("/d/out/scores/part-00000.parquet", "/d/out").is_some());
        assert!(conflict("/d/out/mine.parquet", "/d/out").is_none());
        assert!(conflict("s3://b/data/", "s3://b/data/out").is_some());
        assert!(conflict("s3://b/data/", "s3://c/data/out").is_none());
    }
}
