//! Plugin packages: signing keys, signing, verifying, inspecting.

use crate::*;

#[derive(Subcommand)]
pub(crate) enum PluginCmd {
    /// Generate an Ed25519 signing key: writes NAME.key (PKCS#8 PEM, mode
    /// 0600) and NAME.pub (hex; copy it into a node's trust directory).
    Keygen {
        /// DIR/NAME of the key files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a plugin's manifest and sign it (replaces any manifest and
    /// signatures the input has).
    Sign {
        /// Private key file (NAME.key).
        #[arg(long)]
        key: PathBuf,
        /// Plugin name.
        #[arg(long)]
        name: String,
        /// Plugin version.
        #[arg(long)]
        version: String,
        /// The consensus type it implements (what `--plugin TYPE=...` and
        /// a channel's ConsensusType must say).
        #[arg(long)]
        consensus_type: String,
        /// A capability it asks for (cluster, replication, storage). Repeatable.
        #[arg(long = "capability", value_name = "C")]
        capabilities: Vec<String>,
        /// The contract it targets (default: the version the component's
        /// own imports and exports name).
        #[arg(long)]
        wit: Option<String>,
        /// The component to sign.
        input: PathBuf,
        /// Where to write the signed plugin.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Check a plugin's signatures against a trust directory and its
    /// contract version against this host; exits non-zero unless it is
    /// signed by a trusted key and loadable.
    Verify {
        /// Directory of trusted public keys (*.pub).
        #[arg(long)]
        trust_dir: PathBuf,
        /// Also require the manifest to say this consensus type.
        #[arg(long)]
        consensus_type: Option<String>,
        /// The plugin file.
        file: PathBuf,
    },
    /// Write a new plugin crate: Fabric's solo on the contract's WIT alone
    /// (no path dependency on this repository), ready to build with
    /// `cargo build --target wasm32-wasip2 --release`, test with
    /// `consenter-host conformance`, sign and run.
    New {
        /// The plugin's name (lower case letters, digits, `-`, `_`): the
        /// crate's name and the consensus type its README uses.
        name: String,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Install a new build of a plugin on a running node, live, over its
    /// admin endpoint (`POST /consenter/v1/plugins`). The node checks the
    /// package (a signature by a key in its trust directory unless it
    /// runs with --allow-unsigned-plugins, the contract, the canary, and
    /// the canary with each channel of that type); then every channel of
    /// the type upgrades at its next block and the build is on probation
    /// there (--plugin-probation): a trap or failure meanwhile rolls the
    /// channel back to the build before. The node keeps the build for its
    /// next start.
    Install {
        #[command(flatten)]
        admin: AdminArgs,
        /// The consensus type, for a package without a manifest (a signed
        /// package's manifest names it).
        #[arg(long)]
        consensus_type: Option<String>,
        /// The plugin package.
        file: PathBuf,
    },
    /// List the plugin builds a running node serves (`GET
    /// /consenter/v1/plugins`): consensus type, version, SHA-256, kind and
    /// where each came from.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print a plugin's manifest, signatures (key ids), size, SHA-256 and
    /// its WIT imports and exports.
    Inspect {
        /// The plugin file.
        file: PathBuf,
    },
}

/// The files of a new plugin crate (`plugin new`): the template crate
/// `plugins/template` (built and conformance-tested with the tests), the
/// contract, and the plugins workspace's lock file (the same wit-bindgen).
const TEMPLATE_LIB: &str = include_str!("../../../plugins/template/src/lib.rs");
const TEMPLATE_WIT: &str = include_str!("../../../wit/consenter.wit");
const TEMPLATE_LOCK: &str = include_str!("../../../plugins/Cargo.lock");
/// `wit-bindgen` as `plugins/Cargo.toml` has it (a test keeps them equal).
pub(crate) const TEMPLATE_WIT_BINDGEN: &str =
    r#"wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc", "std"] }"#;

fn new_plugin(name: &str, dir: Option<PathBuf>) -> Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!("plugin name {name:?}: use lower case letters, digits, '-' and '_', starting with a letter");
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: exists and is not empty; choose another --dir", dir.display());
    }
    let lib = name.replace('-', "_");
    let cargo = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = \
         [\"cdylib\"]\n\n[dependencies]\n{TEMPLATE_WIT_BINDGEN}\n\n# Its own workspace, wherever it is.\n\
         [workspace]\n\n[profile.release]\nopt-level = 3\nlto = true\ncodegen-units = 1\npanic = \"abort\"\n\
         strip = true\n"
    );
    let readme = format!(
        "# {name}\n\nA consenter plugin for consenter-host (Fabric's solo, to change into your own \
         algorithm; the contract is `wit/consenter.wit`).\n\n```sh\ncargo build --target wasm32-wasip2 \
         --release\nconsenter-host conformance target/wasm32-wasip2/release/{lib}.wasm --consensus-type \
         {name}\nconsenter-host plugin keygen --out keys/me\nconsenter-host plugin sign --key keys/me.key \
         --name {name} --version 0.1.0 --consensus-type {name} target/wasm32-wasip2/release/{lib}.wasm -o \
         {name}.wasm\nmkdir -p consenter-data/trusted-keys && cp keys/me.pub consenter-data/trusted-keys/\n\
         consenter-host start --plugin {name}={name}.wasm --dev-consensus {name}\n```\n"
    );
    let files: [(&str, &str); 6] = [
        ("Cargo.toml", &cargo),
        ("Cargo.lock", TEMPLATE_LOCK),
        ("src/lib.rs", TEMPLATE_LIB),
        ("wit/consenter.wit", TEMPLATE_WIT),
        ("README.md", &readme),
        (".gitignore", "/target\n"),
    ];
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("wrote plugin crate {name} in {}", dir.display());
    println!("  build:   cd {} && cargo build --target wasm32-wasip2 --release", dir.display());
    println!("  test:    consenter-host conformance target/wasm32-wasip2/release/{lib}.wasm --consensus-type {name}");
    println!("  then sign it and run it in a node: see its README.md");
    Ok(())
}

pub(crate) fn plugin_cmd(c: PluginCmd) -> Result<()> {
    match c {
        PluginCmd::New { name, dir } => new_plugin(&name, dir),
        PluginCmd::Install { admin: a, consensus_type, file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let path = match &consensus_type {
                Some(t) => format!("{}?consensusType={t}", admin::plugins::PLUGINS),
                None => admin::plugins::PLUGINS.to_string(),
            };
            let answer = admin::request_with(&a.address, &a.tls()?, "POST", &path, Some(("application/wasm", &bytes)))?;
            print_answer(&answer)
        }
        PluginCmd::List { admin: a } => {
            let answer = admin::request_with(&a.address, &a.tls()?, "GET", admin::plugins::PLUGINS, None)?;
            print_answer(&answer)
        }
        PluginCmd::Keygen { out } => {
            let (key, public, id) = package::keygen(&out)?;
            println!("private key: {} (keep it secret)", key.display());
            println!("public key:  {} (key id {id}; copy it into a node's trust directory)", public.display());
            Ok(())
        }
        PluginCmd::Sign { key, name, version, consensus_type, capabilities, wit, input, out } => {
            let file = input.display().to_string();
            let key = package::SigningKey::read(&key)?;
            let bytes = std::fs::read(&input).with_context(|| format!("reading {file}"))?;
            let wit = match wit {
                Some(w) => w,
                None => package::component_wit(&package::Package::parse(&file, &bytes)?).with_context(|| {
                    format!("{file}: the component names no {} interface; pass --wit", package::WIT_NAMESPACE)
                })?,
            };
            let manifest = package::Manifest { name, version, wit, consensus_type, capabilities };
            let signed = package::sign(&file, &bytes, &manifest, &key)?;
            std::fs::write(&out, &signed).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "signed {} -> {}: consensus type {}, contract {}, key id {}, {} bytes",
                file,
                out.display(),
                manifest.consensus_type,
                manifest.wit,
                key.key_id,
                signed.len()
            );
            Ok(())
        }
        PluginCmd::Verify { trust_dir, consensus_type, file } => {
            let name = file.display().to_string();
            let bytes = std::fs::read(&file).with_context(|| format!("reading {name}"))?;
            let store = package::TrustStore::load(&trust_dir)?;
            let pkg = package::Package::parse(&name, &bytes)?;
            for c in package::check_signatures(&pkg, &store) {
                match c {
                    package::SignatureCheck::Trusted { key_id, signer } => {
                        println!("{name}: signed by {signer} (key id {key_id}): valid, trusted")
                    }
                    package::SignatureCheck::Unknown { key_id } => {
                        println!("{name}: signed by key id {key_id}: not in {}", trust_dir.display())
                    }
                    package::SignatureCheck::Invalid { key_id, signer } => {
                        println!("{name}: signed by {signer} (key id {key_id}): INVALID (modified after signing)")
                    }
                }
            }
            let result = package::verify(&name, &pkg, &store)
                .and_then(|k| package::check_contract(&name, &bytes, runtime::WIT_PACKAGES).map(|_| k))
                .and_then(|k| match (&consensus_type, &pkg.manifest) {
                    (Some(want), Some(m)) if &m.consensus_type != want => Err(package::PackageError::TypeMismatch {
                        file: name.clone(),
                        manifest: m.consensus_type.clone(),
                        wanted: want.clone(),
                    }),
                    _ => Ok(k),
                });
            match result {
                Ok(k) => {
                    let m =
                        pkg.manifest.as_ref().map(|m| (m.consensus_type.as_str(), m.wit.as_str())).unwrap_or_default();
                    println!(
                        "{name}: TRUSTED (signer {}, key id {}; consensus type {}, contract {})",
                        k.name, k.key_id, m.0, m.1
                    );
                    Ok(())
                }
                Err(e) => {
                    println!("{name}: NOT TRUSTED: {e}");
                    bail!("{name}: verification failed")
                }
            }
        }
        PluginCmd::Inspect { file } => {
            let name = file.display().to_string();
            let bytes = std::fs::read(&file).with_context(|| format!("reading {name}"))?;
            let pkg = package::Package::parse(&name, &bytes)?;
            println!("file:      {name}");
            println!("size:      {} bytes", pkg.size);
            println!("sha256:    {}", hex(&pkg.file_sha256));
            println!("signed:    first {} bytes, sha256 {}", pkg.signed_len, hex(&pkg.signed_digest));
            match &pkg.manifest {
                Some(m) => {
                    println!("manifest:");
                    println!("  name:           {}", m.name);
                    println!("  version:        {}", m.version);
                    println!("  wit:            {}", m.wit);
                    println!("  consensus-type: {}", m.consensus_type);
                    let caps = if m.capabilities.is_empty() { "(none)".to_string() } else { m.capabilities.join(", ") };
                    println!("  capabilities:   {caps}");
                }
                None => println!("manifest:  (none)"),
            }
            println!("signatures: {}", pkg.signatures.len());
            for s in &pkg.signatures {
                println!("  ed25519 key id {}", s.key_id);
            }
            println!("imports:");
            for i in &pkg.imports {
                println!("  {i}");
            }
            println!("exports:");
            for e in &pkg.exports {
                println!("  {e}");
            }
            match package::check_contract(&name, &bytes, runtime::WIT_PACKAGES) {
                Ok(_) => println!("contract:  compatible with this host ({})", runtime::WIT_PACKAGES.join(", ")),
                Err(e) => println!("contract:  NOT loadable by this host: {e}"),
            }
            Ok(())
        }
    }
}
