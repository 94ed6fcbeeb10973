//! Who may join a job: TLS, mutual TLS and worker tokens, with real processes, real
//! certificates (made by `openssl` for each test) and gRPC on 127.0.0.1; secrets never show in
//! logs, status output or the summary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "tok-6b1d0e-very-secret";
const AWS_SECRET: &str = "aws-sekrit-93f1c7";

/// Runs `openssl args…` in `dir`, asserting success.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate signed by it,
/// and a second, unrelated CA.
fn certificates(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=apscore test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    // Version 3 certificates (webpki refuses version 1, which `x509 -req` makes without
    // extensions).
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ext) in [
        ("server", Some("server.ext")),
        ("client", Some("client.ext")),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Some(ext) = ext {
            args.extend(["-extfile".into(), ext.into()]);
        }
        openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
}

struct Setup {
    moto: Moto,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let moto = Moto::start();
        moto.create_bucket("sec");
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        let setup = Setup { moto, dir };
        let out = setup
            .command(&[
                "sample",
                "-o",
                "s3://sec/data",
                "--rows",
                "60",
                "--row-group-rows",
                "10",
                "--with-logps",
            ])
            .output()
            .unwrap();
        assert_success(&out, &["sample"]);
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `apscore args…` against moto, with a recognisable AWS secret in its environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.moto.command(args);
        cmd.env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("RUST_LOG", "info");
        cmd
    }

    fn coordinator(&self, port: u16, extra: &[&str]) -> std::process::Child {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "coordinator",
            "-i",
            "s3://sec/data/",
            "-o",
            "s3://sec/out",
            "--shard-rows",
            "10",
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let log = std::fs::File::create(self.path("coordinator.log")).unwrap();
        let child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(port, "the coordinator");
        child
    }

    /// Runs a worker to its end (at most 60 s).
    fn worker(&self, url: &str, extra: &[&str]) -> Output {
        let mut args = vec!["worker", "--coordinator", url, "--give-up-after", "3s"];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "a worker ran for over 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "needs moto_server and openssl: bash .ci/run installs them"]
fn workers_without_the_token_the_right_ca_or_tls_are_refused_and_secrets_stay_secret() {
    let s = Setup::new();
    let port = free_port();
    let (cert, key, ca, token) = (
        s.path("server.pem"),
        s.path("server.key"),
        s.path("ca.pem"),
        s.path("token"),
    );
    let mut coordinator = s.coordinator(
        port,
        &[
            "--tls-cert",
            path_str(&cert),
            "--tls-key",
            path_str(&key),
            "--token-file",
            path_str(&token),
        ],
    );
    let https = format!("https://localhost:{port}");

    let no_token = s.worker(&https, &["--tls-ca", path_str(&ca)]);
    assert_eq!(no_token.status.code(), Some(3), "{}", stderr(&no_token));
    assert!(
        stderr(&no_token).contains("requires a worker token"),
        "{}",
        stderr(&no_token)
    );

    let mut bad = s.command(&[
        "worker",
        "--coordinator",
        &https,
        "--give-up-after",
        "3s",
        "--tls-ca",
        path_str(&ca),
    ]);
    bad.env("APSCORE_TOKEN", "a-guess");
    let wrong = bad.output().unwrap();
    assert_eq!(wrong.status.code(), Some(3), "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("not this coordinator's"),
        "{}",
        stderr(&wrong)
    );

    let other_ca = s.worker(
        &https,
        &[
            "--tls-ca",
            path_str(&s.path("other-ca.pem")),
            "--token-file",
            path_str(&token),
        ],
    );
    assert_eq!(other_ca.status.code(), Some(3), "{}", stderr(&other_ca));
    assert!(
        stderr(&other_ca).to_lowercase().contains("certificate"),
        "{}",
        stderr(&other_ca)
    );

    let plaintext = s.worker(
        &format!("http://127.0.0.1:{port}"),
        &["--token-file", path_str(&token)],
    );
    assert!(
        !plaintext.status.success(),
        "a plaintext worker joined a TLS coordinator"
    );
    assert_eq!(plaintext.status.code(), Some(3), "{}", stderr(&plaintext));
    assert!(
        stderr(&plaintext).contains("probably serves TLS"),
        "{}",
        stderr(&plaintext)
    );

    // The status of the job, with the CA and the token.
    let status = s
        .command(&[
            "status",
            "--coordinator",
            &https,
            "--tls-ca",
            path_str(&ca),
            "--token-file",
            path_str(&token),
        ])
        .output()
        .unwrap();
    assert_success(&status, &["status"]);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status_text.contains("6 pending"), "{status_text}");

    // A worker with all it needs does the job.
    let good = s.worker(
        &https,
        &["--tls-ca", path_str(&ca), "--token-file", path_str(&token)],
    );
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(
        coordinator.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(s.path("coordinator.log")).unwrap()
    );

    let out = s.moto.download("sec", "out", &s.path("out"));
    let mut everything = vec![
        std::fs::read_to_string(s.path("coordinator.log")).unwrap(),
        status_text,
        std::fs::read_to_string(out.join("summary.json")).unwrap(),
    ];
    for out in [&no_token, &wrong, &other_ca, &plaintext, &good] {
        everything.push(stderr(out));
        everything.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    for text in &everything {
        assert!(!text.contains(TOKEN), "the token leaked:\n{text}");
        assert!(!text.contains(AWS_SECRET), "the AWS secret leaked:\n{text}");
    }
}

#[test]
#[ignore = "needs moto_server and openssl: bash .ci/run installs them"]
fn mutual_tls_refuses_a_worker_without_a_client_certificate() {
    let s = Setup::new();
    let port = free_port();
    let ca = s.path("ca.pem");
    let mut coordinator = s.coordinator(
        port,
        &[
            "--tls-cert",
            path_str(&s.path("server.pem")),
            "--tls-key",
            path_str(&s.path("server.key")),
            "--tls-client-ca",
            path_str(&ca),
        ],
    );
    let https = format!("https://localhost:{port}");
    let anonymous = s.worker(&https, &["--tls-ca", path_str(&ca)]);
    assert!(
        !anonymous.status.success(),
        "a worker without a certificate joined"
    );
    assert_eq!(anonymous.status.code(), Some(3), "{}", stderr(&anonymous));
    assert!(
        stderr(&anonymous).to_lowercase().contains("certificate"),
        "{}",
        stderr(&anonymous)
    );
    let known = s.worker(
        &https,
        &[
            "--tls-ca",
            path_str(&ca),
            "--tls-cert",
            path_str(&s.path("client.pem")),
            "--tls-key",
            path_str(&s.path("client.key")),
        ],
    );
    assert!(known.status.success(), "{}", stderr(&known));
    assert!(coordinator.wait().unwrap().success());
}

#[test]
fn a_coordinator_refuses_plaintext_on_a_reachable_address_unless_insecure() {
    let out = apscore()
        .args([
            "coordinator",
            "-i",
            "/nonexistent",
            "-o",
            "/tmp/x",
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refusing to serve plaintext gRPC on 0.0.0.0:0") && err.contains("--insecure"),
        "{err}"
    );
    // With --insecure it gets as far as its (missing) input.
    let out = apscore()
        .args([
            "coordinator",
            "-i",
            "/nonexistent",
            "-o",
            "/tmp/x",
            "--listen",
            "0.0.0.0:0",
            "--insecure",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no Parquet files found"),
        "{}",
        stderr(&out)
    );
}
