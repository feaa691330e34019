//! Compiles every `bpf/*.bpf.c` into a BPF object with clang and the libbpf-dev
//! headers; `src/lib.rs` embeds the objects. Nothing here depends on the build
//! host's kernel: the objects use only UAPI headers, and every runtime choice is a
//! `const volatile` global set at load time.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// Objects built from `bpf/<name>.bpf.c`; `src/lib.rs` names the same list.
const PROGRAMS: &[&str] = &["sock_addr", "sock_ops", "reuseport", "xdp", "tc", "sk_skb", "sk_msg"];

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-env-changed=SLUICE_CLANG");
    println!("cargo:rerun-if-changed=lib");
    for entry in std::fs::read_dir(dir.join("lib"))? {
        println!("cargo:rerun-if-changed={}", entry?.path().display());
    }

    let clang = find_clang()?;
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let (target_arch, multiarch) = match arch.as_str() {
        "x86_64" => ("x86", "x86_64-linux-gnu"),
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        other => bail!("sluice-bpf: no BPF build settings for target architecture {other}"),
    };
    for name in PROGRAMS {
        let src = dir.join(format!("{name}.bpf.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        let obj = out.join(format!("{name}.bpf.o"));
        compile(&clang, &src, &obj, target_arch, multiarch, &dir)?;
    }
    Ok(())
}

fn compile(
    clang: &str,
    src: &Path,
    obj: &Path,
    target_arch: &str,
    multiarch: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    let output = Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{target_arch}"))
        // <linux/types.h> pulls <asm/types.h>, which Debian keeps per architecture.
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg(format!("-I{}", dir.display()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj)
        .output()
        .with_context(|| format!("running {clang}"))?;
    if !output.status.success() {
        bail!(
            "clang failed on {}:\n{}\nIs libbpf-dev installed (apt-get install -y libbpf-dev)?",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// `SLUICE_CLANG`, else the newest versioned clang, else `clang`.
fn find_clang() -> anyhow::Result<String> {
    if let Ok(c) = env::var("SLUICE_CLANG") {
        return Ok(c);
    }
    let candidates =
        (14..=22).rev().map(|v| format!("clang-{v}")).chain(std::iter::once("clang".to_string()));
    for c in candidates {
        if Command::new(&c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(c);
        }
    }
    bail!("no clang found: install it (apt-get install -y clang libbpf-dev) or set SLUICE_CLANG")
}
