//! `az://` URLs against a real Azure Blob Storage emulator: Azurite, started on 127.0.0.1 by
//! the test. Data is sampled into a container, ranked from the container into the container,
//! then re-selected from the container into a local folder, and compared with the same job run
//! locally. `.ci/run` installs Azurite (`npm install --global azurite`) and the Python client
//! that creates the container (`pip install azure-storage-blob`); without them this test fails
//! and says so.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;

/// Azurite's well-known development account key (public, the same in every installation).
const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite blob service on a free loopback port, stopped on drop.
struct Azurite {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Azurite {
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let child = Command::new("azurite-blob")
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck"])
            .arg("--location")
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start `azurite-blob`: install it with `npm install --global azurite` (bash .ci/run does)");
        let azurite = Azurite {
            child,
            port,
            _data: data,
        };
        wait_for_port(port, "azurite");
        azurite
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn create_container(&self, name: &str) {
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};\
             BlobEndpoint={}/devstoreaccount1;",
            self.endpoint()
        );
        let script = format!(
            "from azure.storage.blob import BlobServiceClient\n\
             BlobServiceClient.from_connection_string({connection:?}).create_container({name:?})\n"
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "creating container {name} (needs `pip install azure-storage-blob`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `apscore args…` pointed at this emulator, asserting success; returns stdout.
    fn apscore(&self, args: &[&str]) -> String {
        let out = apscore()
            .args(args)
            .env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", self.endpoint())
            .output()
            .unwrap();
        assert_success(&out, args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs azurite-blob (npm install --global azurite): bash .ci/run installs it"]
fn rank_and_select_through_azure_blob_storage() {
    let azurite = Azurite::start();
    azurite.create_container("prefs");
    let dir = tempfile::tempdir().unwrap();
    let sample = [
        "--rows",
        "3000",
        "--files",
        "2",
        "--row-group-rows",
        "500",
        "--with-logps",
        "--bad-rows",
        "4",
    ];

    let mut args = vec!["sample", "-o", "az://prefs/data/"];
    args.extend(sample);
    azurite.apscore(&args);
    let stdout = azurite.apscore(&[
        "rank",
        "-i",
        "az://prefs/data/",
        "-o",
        "az://prefs/out",
        "--shard-rows",
        "1000",
    ]);
    assert!(
        stdout.contains("ranked 2996 of 3000 input rows (4 rejected)"),
        "{stdout}"
    );

    // Re-select from the container into a local folder, then read it.
    let from_azure = dir.path().join("from-azure");
    azurite.apscore(&[
        "select",
        "--from",
        "az://prefs/out",
        "-o",
        path_str(&from_azure),
    ]);

    // The same job, all local.
    let data = dir.path().join("data");
    let mut args = vec!["sample", "-o", path_str(&data)];
    args.extend(sample);
    run_ok(&args);
    let local = dir.path().join("local");
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&local),
        "--shard-rows",
        "1000",
    ]);

    let (a, b) = (
        read_parquet(&from_azure.join("ranking.parquet")),
        read_parquet(&local.join("ranking.parquet")),
    );
    assert_eq!(i64s(&a, "row_id"), i64s(&b, "row_id"));
    assert_eq!(
        f64s(&a, "alignment_potential"),
        f64s(&b, "alignment_potential")
    );
    assert!(
        strings(&a, "source_file")
            .iter()
            .all(|f| f.starts_with("az://prefs/data/part-0000"))
    );
    let (a, b) = (
        read_parquet(&from_azure.join("selected")),
        read_parquet(&local.join("selected")),
    );
    assert_eq!(strings(&a, "prompt"), strings(&b, "prompt"));
    assert_eq!(
        read_parquet(&from_azure.join("rejected_rows.parquet")).num_rows(),
        4
    );
    assert_eq!(
        summary(&from_azure)["inputs"][1]["path"],
        "az://prefs/data/part-00001.parquet"
    );
}
