//! A moto server (S3-compatible) on a free loopback port, for tests against real object
//! storage. `.ci/run` installs moto (`pip install "moto[server]"`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{apscore, assert_success, free_port, wait_for_port};

/// A moto server on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start `moto_server`: install it with `pip install \"moto[server]\"` (bash .ci/run does)");
        let moto = Moto { child, port };
        wait_for_port(port, "moto_server");
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with a plain HTTP request (moto does not check signatures).
    pub fn create_bucket(&self, name: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "creating bucket {name}: {response}"
        );
    }

    /// `apscore args…` with the environment that points the S3 client at this server.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = apscore();
        cmd.args(args)
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1");
        cmd
    }

    /// Runs `apscore args…` against this server, asserting success; returns stdout.
    pub fn apscore(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert_success(&out, args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_access_key_id("testing")
                .with_secret_access_key("testing")
                .with_region("us-east-1")
                .build()
                .unwrap(),
        )
    }

    /// Copies every object under `prefix` of `bucket` into `dir`, keeping their relative
    /// paths; returns `dir`.
    pub fn download(&self, bucket: &str, prefix: &str, dir: &Path) -> PathBuf {
        let store = self.store(bucket);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let root = StorePath::from(prefix);
            let objects: Vec<_> = store.list(Some(&root)).try_collect().await.unwrap();
            assert!(!objects.is_empty(), "nothing under s3://{bucket}/{prefix}");
            for meta in objects {
                let relative = meta.location.as_ref()[prefix.len()..].trim_start_matches('/');
                let bytes = store
                    .get(&meta.location)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let target = dir.join(relative);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(target, bytes).unwrap();
            }
        });
        dir.to_path_buf()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
