//! `--job FILE`: the flags of `run`, `rank` and `coordinator` from a TOML file, so that a job is
//! a file a scheduler or a ConfigMap can hold. Flags given on the command line win over the
//! file's.
//!
//! Keys are flag names without the dashes (`shard-rows` or `shard_rows`); values are strings,
//! numbers, booleans (`true` gives the flag, `false` leaves it out) or, for flags that take
//! several values (`input`), arrays. The file's flags are put on the command line right after
//! the subcommand, each unless the command line names it already; clap then parses the whole
//! as usual, so the file gets the same checks and error messages as flags do.
//! `deploy/job.example.toml` shows every key.

use std::ffi::OsString;

use clap::CommandFactory;

use crate::cli::Cli;

/// Subcommands that take `--job`.
const JOB_COMMANDS: [&str; 3] = ["run", "rank", "coordinator"];

/// The job file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("cannot read the job file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the job file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("the job file {path}: `{key}` {problem}")]
    Key {
        path: String,
        key: String,
        problem: String,
    },
    #[error("--job needs a file name")]
    NoPath,
}

/// `argv` with the job file's flags in place of `--job FILE`; unchanged without `--job`.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, JobFileError> {
    let Some(sub_at) = argv
        .iter()
        .position(|a| JOB_COMMANDS.iter().any(|c| a == c))
    else {
        return Ok(argv);
    };
    let mut user = Vec::with_capacity(argv.len());
    let mut path = None;
    let mut rest = argv[sub_at + 1..].iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        if text == "--job" {
            path = Some(rest.next().ok_or(JobFileError::NoPath)?.clone());
        } else if let Some(p) = text.strip_prefix("--job=") {
            path = Some(OsString::from(p));
        } else {
            user.push(arg.clone());
        }
    }
    let Some(path) = path else {
        return Ok(argv);
    };
    let path = path.to_string_lossy().into_owned();
    let subcommand = argv[sub_at].to_string_lossy().into_owned();
    let from_file = file_flags(&path, &subcommand, &user)?;
    let mut out: Vec<OsString> = argv[..=sub_at].to_vec();
    out.extend(from_file);
    out.extend(user);
    Ok(out)
}

/// The file's flags, as command-line tokens, leaving out those the user gave.
fn file_flags(
    path: &str,
    subcommand: &str,
    user: &[OsString],
) -> Result<Vec<OsString>, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Read {
        path: path.into(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| JobFileError::Parse {
        path: path.into(),
        source,
    })?;
    let command = Cli::command();
    let command = command
        .find_subcommand(subcommand)
        .expect("a job subcommand exists");
    let given = given_flags(user);
    let mut tokens = Vec::new();
    for (key, value) in table {
        let bad = |problem: String| JobFileError::Key {
            path: path.into(),
            key: key.clone(),
            problem,
        };
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| {
                a.get_long() == Some(name.as_str())
                    || a.get_all_aliases()
                        .is_some_and(|all| all.contains(&name.as_str()))
            })
            .filter(|_| name != "job" && name != "help")
            .ok_or_else(|| bad(format!("is not a flag of `apscore {subcommand}`")))?;
        let long = arg.get_long().expect("found by its long name");
        let named_by_user = given.iter().any(|g| {
            g == long
                || arg
                    .get_all_aliases()
                    .is_some_and(|all| all.contains(&g.as_str()))
                || arg.get_short().is_some_and(|s| *g == s.to_string())
        });
        if named_by_user {
            continue;
        }
        let flag = OsString::from(format!("--{long}"));
        match value {
            toml::Value::Boolean(true) => tokens.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                if items.is_empty() {
                    continue;
                }
                tokens.push(flag);
                for item in items {
                    tokens.push(scalar(&item).ok_or_else(|| {
                        bad("holds an array of something else than strings or numbers".into())
                    })?);
                }
            }
            other => {
                let value = scalar(&other)
                    .ok_or_else(|| bad("must be a string, number, boolean or array".into()))?;
                tokens.push(flag);
                tokens.push(value);
            }
        }
    }
    Ok(tokens)
}

fn scalar(value: &toml::Value) -> Option<OsString> {
    match value {
        toml::Value::String(s) => Some(s.into()),
        toml::Value::Integer(i) => Some(i.to_string().into()),
        toml::Value::Float(f) => Some(f.to_string().into()),
        _ => None,
    }
}

/// Names of the flags in the user's tokens: long names without dashes, short letters.
fn given_flags(user: &[OsString]) -> Vec<String> {
    user.iter()
        .filter_map(|a| {
            let a = a.to_string_lossy();
            if let Some(long) = a.strip_prefix("--") {
                Some(long.split('=').next().unwrap_or(long).to_string())
            } else {
                let short = a.strip_prefix('-')?;
                (short.len() == 1).then(|| short.to_string())
            }
        })
        .collect()
}
