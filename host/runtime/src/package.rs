//! Plugin packages: a plugin file is a WebAssembly component with a
//! manifest and Ed25519 signatures appended as custom sections. This module
//! reads and writes them, checks the contract version a component targets
//! (before it is compiled), manages signing keys and the trust store, and
//! decides whether the node may load a `--plugin` file. It touches only the
//! bytes it is given and, for keys and the trust store, the files named by
//! the caller.
//!
//! # Format
//!
//! A package is the component binary followed by (or containing, anywhere
//! at top level) one custom section named [`MANIFEST_SECTION`], then zero or
//! more custom sections named [`SIGNATURE_SECTION`] at the very end. A
//! custom section is `0x00`, a LEB128 u32 size, a LEB128 name length, the
//! name, the payload; wasmtime ignores them. Sections are read with
//! wasmparser and written with wasm-encoder.
//!
//! The manifest payload is UTF-8 `key=value` lines (`#` comments allowed):
//! `name`, `version`, `wit` (e.g. `fabric:consenter@0.1.0`),
//! `consensus-type` (e.g. `solo`) and zero or more `capability` (`cluster`,
//! `storage`). Unknown keys are refused.
//!
//! A signature payload is `algorithm=ed25519`, `key-id=<16 hex>`,
//! `signature=<128 hex>` lines. **What is signed**: let `P` be the file's
//! bytes before its first signature section (the whole component with the
//! manifest). The Ed25519 message is [`SIGNING_CONTEXT`] followed by
//! SHA-256(`P`). Every section after the first signature section must be a
//! signature section, so nothing unsigned can be appended; several signers
//! may each append one. The key id is the hex of the first 8 bytes of
//! SHA-256 of the 32-byte public key.
//!
//! # Keys
//!
//! `NAME.key`: the PKCS#8 document of the private key (as `ring` generates
//! it; OpenSSL's `genpkey -algorithm ed25519` output is accepted too) in PEM
//! (`-----BEGIN PRIVATE KEY-----`), mode 0600. `NAME.pub`: the 32-byte raw
//! public key as 64 hex digits on one line (`#` comment lines allowed). The
//! trust store is a directory of `*.pub` files.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::signature::{self, Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

use crate::block::hex;

/// Name of the manifest custom section.
pub const MANIFEST_SECTION: &str = "consenter-manifest";
/// Name of a signature custom section.
pub const SIGNATURE_SECTION: &str = "consenter-signature";
/// Domain separation prefix of the signed message.
pub const SIGNING_CONTEXT: &[u8] = b"consenter-plugin-signature-v1\0";
/// The contract package name.
pub const WIT_NAMESPACE: &str = "fabric:consenter";
/// Capabilities a manifest may ask for (imports of the clustered world).
pub const CAPABILITIES: &[&str] = &["cluster", "replication", "storage"];

const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Errors reading, checking, signing or admitting a plugin package. Each
/// names the file (or plugin) it is about.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: not a WebAssembly component: {reason}")]
    NotComponent { file: String, reason: String },
    #[error("{file}: malformed plugin package: {reason}")]
    Malformed { file: String, reason: String },
    #[error("{file}: bad manifest: {reason}")]
    BadManifest { file: String, reason: String },
    #[error("{file}: is signed but carries no {MANIFEST_SECTION} section")]
    NoManifest { file: String },
    #[error(
        "{file}: the plugin is not signed; refusing to load it (sign it with `consenter-host plugin sign`, or pass --allow-unsigned-plugins for development)"
    )]
    Unsigned { file: String },
    #[error("{file}: signed only by untrusted key(s) {key_ids}; no matching key in the trust store {trust_dir}")]
    Untrusted { file: String, key_ids: String, trust_dir: String },
    #[error(
        "{file}: signature by trusted key {key_id} ({signer}) does not verify: the file was modified after it was signed"
    )]
    BadSignature { file: String, key_id: String, signer: String },
    #[error("{file}: its manifest says consensus type {manifest:?}, but it was registered as {wanted:?}")]
    TypeMismatch { file: String, manifest: String, wanted: String },
    #[error(
        "plugin {file}: built for contract {plugin_wit}, but this host speaks {host_wit} (major.minor must match one of them)"
    )]
    WitMismatch { file: String, plugin_wit: String, host_wit: String },
    #[error("plugin {file}: the manifest does not match the component: {reason}")]
    ManifestLies { file: String, reason: String },
    #[error("{file}: {reason}")]
    Key { file: String, reason: String },
}

/// A plugin's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Plugin name (free text, no newline).
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// The contract it targets, e.g. `fabric:consenter@0.1.0`.
    pub wit: String,
    /// The consensus type it implements, e.g. `solo`.
    pub consensus_type: String,
    /// Capabilities it asks for (see [`CAPABILITIES`]).
    pub capabilities: Vec<String>,
}

impl Manifest {
    /// The section payload.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# consenter plugin manifest v1\n");
        s.push_str(&format!("name={}\n", self.name));
        s.push_str(&format!("version={}\n", self.version));
        s.push_str(&format!("wit={}\n", self.wit));
        s.push_str(&format!("consensus-type={}\n", self.consensus_type));
        for c in &self.capabilities {
            s.push_str(&format!("capability={c}\n"));
        }
        s
    }

    /// Parses a section payload; `Err` says what is wrong.
    pub fn parse(payload: &[u8]) -> Result<Manifest, String> {
        let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_string())?;
        let (mut name, mut version, mut wit, mut ctype) = (None, None, None, None);
        let mut capabilities = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {}: expected key=value, got {line:?}", n + 1));
            };
            let (k, v) = (k.trim(), v.trim());
            if v.is_empty() {
                return Err(format!("line {}: {k} is empty", n + 1));
            }
            let slot = match k {
                "name" => &mut name,
                "version" => &mut version,
                "wit" => &mut wit,
                "consensus-type" => &mut ctype,
                "capability" => {
                    if !CAPABILITIES.contains(&v) {
                        return Err(format!("unknown capability {v:?} (known: {})", CAPABILITIES.join(", ")));
                    }
                    if !capabilities.iter().any(|c| c == v) {
                        capabilities.push(v.to_string());
                    }
                    continue;
                }
                other => return Err(format!("unknown key {other:?}")),
            };
            if slot.replace(v.to_string()).is_some() {
                return Err(format!("{k} is given twice"));
            }
        }
        let need = |v: Option<String>, k: &str| v.ok_or_else(|| format!("{k} is missing"));
        let m = Manifest {
            name: need(name, "name")?,
            version: need(version, "version")?,
            wit: need(wit, "wit")?,
            consensus_type: need(ctype, "consensus-type")?,
            capabilities,
        };
        parse_wit(&m.wit).ok_or_else(|| format!("wit {:?} is not of the form {WIT_NAMESPACE}@X.Y.Z", m.wit))?;
        Ok(m)
    }

    /// Checks the fields are single-line values (before writing).
    fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("name", &self.name),
            ("version", &self.version),
            ("wit", &self.wit),
            ("consensus-type", &self.consensus_type),
        ] {
            if v.trim().is_empty() || v.contains(['\n', '\r', '=']) || v.trim() != v {
                return Err(format!("{k} {v:?} must be a non-empty single-line value without '='"));
            }
        }
        Manifest::parse(self.to_text().as_bytes()).map(|_| ())
    }
}

/// One signature of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Key id (16 hex digits).
    pub key_id: String,
    /// The 64-byte Ed25519 signature.
    pub signature: Vec<u8>,
}

impl Signature {
    fn to_text(&self) -> String {
        format!("algorithm=ed25519\nkey-id={}\nsignature={}\n", self.key_id, hex(&self.signature))
    }

    fn parse(payload: &[u8]) -> Result<Signature, String> {
        let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_string())?;
        let (mut alg, mut key_id, mut sig) = (None, None, None);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = line.split_once('=').ok_or_else(|| format!("expected key=value, got {line:?}"))?;
            match k.trim() {
                "algorithm" => alg = Some(v.trim().to_string()),
                "key-id" => key_id = Some(v.trim().to_string()),
                "signature" => sig = Some(v.trim().to_string()),
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        if alg.as_deref() != Some("ed25519") {
            return Err(format!("algorithm {alg:?}: only ed25519 is supported"));
        }
        let key_id = key_id.ok_or("key-id is missing")?;
        if key_id.len() != 16 || unhex(&key_id).is_none() {
            return Err(format!("key-id {key_id:?} is not 16 hex digits"));
        }
        let signature = sig.as_deref().and_then(unhex).ok_or("signature is missing or not hex")?;
        if signature.len() != 64 {
            return Err(format!("signature is {} bytes, an Ed25519 signature is 64", signature.len()));
        }
        Ok(Signature { key_id, signature })
    }
}

/// A parsed plugin file.
#[derive(Debug, Clone)]
pub struct Package {
    /// The manifest, if present.
    pub manifest: Option<Manifest>,
    /// Signatures, in file order.
    pub signatures: Vec<Signature>,
    /// Length of the signed prefix (the offset of the first signature
    /// section, or the file length).
    pub signed_len: usize,
    /// SHA-256 of the signed prefix.
    pub signed_digest: [u8; 32],
    /// SHA-256 of the whole file.
    pub file_sha256: [u8; 32],
    /// File size in bytes.
    pub size: usize,
    /// The component's top-level import names.
    pub imports: Vec<String>,
    /// The component's top-level export names.
    pub exports: Vec<String>,
}

/// A top-level section: its id, byte range (id byte to end) and, for a
/// custom section, its name and payload range.
struct Section {
    id: u8,
    start: usize,
    end: usize,
    custom: Option<(String, std::ops::Range<usize>)>,
}

/// A custom section (id 0, size, name, payload), encoded by wasm-encoder.
pub fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    use wasm_encoder::{Encode, Section};
    let section = wasm_encoder::CustomSection { name: name.into(), data: payload.into() };
    let mut out = vec![section.id()];
    section.encode(&mut out);
    out
}

fn check_header(file: &str, bytes: &[u8]) -> Result<(), PackageError> {
    let not = |reason: &str| PackageError::NotComponent { file: file.into(), reason: reason.into() };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(not("no \\0asm header"));
    }
    if bytes[..8] == MODULE_HEADER {
        return Err(not(
            "it is a core wasm module (build for wasm32-wasip2, or wrap it with `wasm-tools component new`)",
        ));
    }
    if bytes[..8] != COMPONENT_HEADER {
        return Err(not(&format!("unknown binary version/layer {}", hex(&bytes[4..8]))));
    }
    Ok(())
}

/// The top-level sections of a component, read with wasmparser (nested
/// modules and components are skipped whole, as one section each).
fn sections(file: &str, bytes: &[u8]) -> Result<Vec<Section>, PackageError> {
    use wasmparser::{Chunk, Parser, Payload};
    check_header(file, bytes)?;
    let bad = |reason: String| PackageError::Malformed { file: file.into(), reason };
    let mut out = Vec::new();
    let mut parser = Parser::new(0);
    let mut pos = 0usize;
    loop {
        let start = pos;
        let (payload, consumed) = match parser.parse(&bytes[pos..], true) {
            Ok(Chunk::Parsed { payload, consumed }) => (payload, consumed),
            Ok(Chunk::NeedMoreData(_)) => {
                return Err(bad(format!("section at offset {start} runs past the end of the file")));
            }
            Err(e) if e.message().contains("unexpected end") => {
                return Err(bad(format!("section at offset {start} runs past the end of the file ({e})")));
            }
            Err(e) => return Err(bad(format!("at offset {start}: {e}"))),
        };
        pos += consumed;
        match payload {
            Payload::Version { .. } => continue,
            Payload::End(_) => break,
            Payload::ModuleSection { unchecked_range, .. } | Payload::ComponentSection { unchecked_range, .. } => {
                // Only the header was consumed; the parser itself already
                // continues after the nested binary, and so does `pos`.
                pos = unchecked_range.end;
                out.push(Section { id: bytes[start], start, end: pos, custom: None });
            }
            Payload::CustomSection(c) => {
                let data = c.data_offset()..c.data_offset() + c.data().len();
                out.push(Section { id: 0, start, end: pos, custom: Some((c.name().to_string(), data)) });
            }
            _ => out.push(Section { id: bytes[start], start, end: pos, custom: None }),
        }
    }
    Ok(out)
}

fn is_named(s: &Section, name: &str) -> bool {
    s.custom.as_ref().is_some_and(|(n, _)| n == name)
}

/// The top-level import and export names of a component (nested modules
/// and components are skipped).
fn component_names(file: &str, bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), PackageError> {
    use wasmparser::{Parser, Payload};
    let bad = |e: wasmparser::BinaryReaderError| PackageError::Malformed { file: file.into(), reason: e.to_string() };
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(bad)? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(r) if depth == 0 => {
                for i in r {
                    imports.push(i.map_err(bad)?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(r) if depth == 0 => {
                for e in r {
                    exports.push(e.map_err(bad)?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

impl Package {
    /// Parses a plugin file (`file` names it in errors).
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Package, PackageError> {
        let secs = sections(file, bytes)?;
        let bad = |reason: String| PackageError::Malformed { file: file.into(), reason };
        let mut manifest = None;
        let mut signatures = Vec::new();
        let mut signed_len = bytes.len();
        for s in &secs {
            let Some((name, range)) = &s.custom else {
                if !signatures.is_empty() {
                    return Err(bad(format!(
                        "section id {} at offset {} follows the signatures (nothing may follow them)",
                        s.id, s.start
                    )));
                }
                continue;
            };
            let payload = &bytes[range.clone()];
            if name == SIGNATURE_SECTION {
                if signatures.is_empty() {
                    signed_len = s.start;
                }
                let sig = Signature::parse(payload)
                    .map_err(|r| bad(format!("signature section at offset {}: {r}", s.start)))?;
                signatures.push(sig);
            } else if !signatures.is_empty() {
                return Err(bad(format!(
                    "custom section {name:?} at offset {} follows the signatures (nothing may follow them)",
                    s.start
                )));
            } else if name == MANIFEST_SECTION {
                if manifest.is_some() {
                    return Err(bad("two manifest sections".into()));
                }
                manifest = Some(
                    Manifest::parse(payload)
                        .map_err(|reason| PackageError::BadManifest { file: file.into(), reason })?,
                );
            }
        }
        let (imports, exports) = component_names(file, &bytes[..signed_len])?;
        Ok(Package {
            manifest,
            signatures,
            signed_len,
            signed_digest: Sha256::digest(&bytes[..signed_len]).into(),
            file_sha256: Sha256::digest(bytes).into(),
            size: bytes.len(),
            imports,
            exports,
        })
    }

    /// The message an Ed25519 signature of this package signs.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = SIGNING_CONTEXT.to_vec();
        m.extend_from_slice(&self.signed_digest);
        m
    }
}

/// `(major, minor, rest)` of `fabric:consenter@X.Y.Z`.
fn parse_wit(s: &str) -> Option<(u64, u64)> {
    let v = s.strip_prefix(WIT_NAMESPACE)?.strip_prefix('@')?;
    let mut it = v.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The contract a `fabric:consenter/<iface>@X.Y.Z` import or export names,
/// as `fabric:consenter@X.Y.Z` (None for other names).
fn contract_of(name: &str) -> Option<String> {
    let rest = name.strip_prefix(WIT_NAMESPACE)?.strip_prefix('/')?;
    let (_, version) = rest.split_once('@')?;
    Some(format!("{WIT_NAMESPACE}@{version}"))
}

fn compatible(a: &str, b: &str) -> bool {
    matches!((parse_wit(a), parse_wit(b)), (Some(x), Some(y)) if x == y)
}

/// Checks, without compiling, that `bytes` targets one of the contracts
/// `host_wits` (e.g. `["fabric:consenter@0.2.1", "fabric:consenter@0.1.0"]`):
/// the manifest's `wit` (if there is a manifest) and every
/// `fabric:consenter/...@X.Y.Z` import and export must have the same
/// major.minor as one of them, all the same one; the manifest must agree
/// with the component (same version, capabilities for the interfaces it
/// imports); it must export `fabric:consenter/chain`. `plugin` names it in
/// errors.
pub fn check_contract(plugin: &str, bytes: &[u8], host_wits: &[&str]) -> Result<Package, PackageError> {
    let pkg = Package::parse(plugin, bytes)?;
    let provided = host_wits.join(", ");
    let mismatch =
        |plugin_wit: String| PackageError::WitMismatch { file: plugin.into(), plugin_wit, host_wit: provided.clone() };
    let lies = |reason: String| PackageError::ManifestLies { file: plugin.into(), reason };
    // The contract the plugin is checked against: the one its manifest, or
    // else its first contract import or export, names.
    let named = pkg.manifest.as_ref().map(|m| m.wit.clone()).or_else(|| component_wit(&pkg));
    let host_wit = match &named {
        Some(w) => match host_wits.iter().find(|h| compatible(w, h)) {
            Some(h) => *h,
            None => return Err(mismatch(w.clone())),
        },
        None => host_wits.first().copied().unwrap_or(""),
    };
    let mut component_wit: Option<String> = None;
    for name in pkg.imports.iter().chain(&pkg.exports) {
        let Some(wit) = contract_of(name) else { continue };
        if !compatible(&wit, host_wit) {
            return Err(mismatch(format!("{wit} (it uses {name})")));
        }
        component_wit.get_or_insert(wit);
    }
    let Some(component_wit) = component_wit else {
        return Err(lies(format!("the component neither imports nor exports any {WIT_NAMESPACE} interface")));
    };
    if !pkg.exports.iter().any(|e| e.starts_with(&format!("{WIT_NAMESPACE}/chain@"))) {
        return Err(lies(format!(
            "the component does not export {WIT_NAMESPACE}/chain (exports: {})",
            pkg.exports.join(", ")
        )));
    }
    if let Some(m) = &pkg.manifest {
        if m.wit != component_wit {
            return Err(lies(format!("manifest says wit {}, the component uses {component_wit}", m.wit)));
        }
        for cap in CAPABILITIES {
            let uses = pkg.imports.iter().any(|i| i.starts_with(&format!("{WIT_NAMESPACE}/{cap}@")));
            if uses && !m.capabilities.iter().any(|c| c == cap) {
                return Err(lies(format!(
                    "the component imports {WIT_NAMESPACE}/{cap} but the manifest does not ask for capability {cap}"
                )));
            }
        }
    }
    Ok(pkg)
}

/// The contract version the component itself uses (from its imports and
/// exports), if any.
pub fn component_wit(pkg: &Package) -> Option<String> {
    pkg.imports.iter().chain(&pkg.exports).find_map(|n| contract_of(n))
}

/// `bytes` with every manifest and signature section removed.
fn strip(file: &str, bytes: &[u8]) -> Result<Vec<u8>, PackageError> {
    let secs = sections(file, bytes)?;
    let mut out = bytes[..8].to_vec();
    for s in &secs {
        if is_named(s, MANIFEST_SECTION) || is_named(s, SIGNATURE_SECTION) {
            continue;
        }
        out.extend_from_slice(&bytes[s.start..s.end]);
    }
    Ok(out)
}

/// `bytes` (a component) with its manifest replaced by `manifest` and no
/// signature.
pub fn with_manifest(file: &str, bytes: &[u8], manifest: &Manifest) -> Result<Vec<u8>, PackageError> {
    manifest.validate().map_err(|reason| PackageError::BadManifest { file: file.into(), reason })?;
    let mut out = strip(file, bytes)?;
    out.extend_from_slice(&custom_section(MANIFEST_SECTION, manifest.to_text().as_bytes()));
    Ok(out)
}

/// Signs a component: replaces its manifest and signatures by `manifest`
/// and one signature by `key`. Refuses a manifest that does not match the
/// component (contract version, capabilities).
pub fn sign(file: &str, bytes: &[u8], manifest: &Manifest, key: &SigningKey) -> Result<Vec<u8>, PackageError> {
    let mut out = with_manifest(file, bytes, manifest)?;
    let pkg = check_contract(file, &out, &[manifest.wit.as_str()])?;
    let sig = key.pair.sign(&pkg.signed_message());
    let s = Signature { key_id: key.key_id.clone(), signature: sig.as_ref().to_vec() };
    out.extend_from_slice(&custom_section(SIGNATURE_SECTION, s.to_text().as_bytes()));
    Ok(out)
}

/// The key id of a public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(public: &[u8]) -> String {
    hex(&Sha256::digest(public)[..8])
}

/// An Ed25519 signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    /// Its key id.
    pub key_id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.key_id).finish()
    }
}

impl SigningKey {
    /// Reads a `NAME.key` file (PEM PKCS#8).
    pub fn read(path: &Path) -> Result<SigningKey, PackageError> {
        let file = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| PackageError::Io { file: file.clone(), source })?;
        let key = |reason: String| PackageError::Key { file: file.clone(), reason };
        let pem = pem::parse(&text).map_err(|e| key(format!("not a PEM file: {e}")))?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(key(format!("PEM label is {:?}, expected PRIVATE KEY (PKCS#8)", pem.tag())));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents())
            .map_err(|e| key(format!("not an Ed25519 PKCS#8 private key: {e}")))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, key_id })
    }

    /// The 32-byte public key.
    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// A new key (tests; `keygen` writes files).
    pub fn generate() -> Result<(SigningKey, Vec<u8>), String> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| format!("generating an Ed25519 key: {e}"))?;
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| format!("reading the new key: {e}"))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok((SigningKey { pair, key_id }, doc.as_ref().to_vec()))
    }
}

/// Writes `<out>.key` (PEM PKCS#8, mode 0600, never overwritten) and
/// `<out>.pub` (hex); returns both paths and the key id.
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf, String), PackageError> {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let file = out.display().to_string();
    if name.is_empty() {
        return Err(PackageError::Key {
            file,
            reason: "give a DIR/NAME path (NAME.key and NAME.pub are written)".into(),
        });
    }
    let key_path = out.with_file_name(format!("{name}.key"));
    let pub_path = out.with_file_name(format!("{name}.pub"));
    let (key, pkcs8) = SigningKey::generate().map_err(|reason| PackageError::Key { file: file.clone(), reason })?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| PackageError::Io { file: dir.display().to_string(), source })?;
    }
    let io = |p: &Path| {
        let f = p.display().to_string();
        move |source| PackageError::Io { file: f, source }
    };
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(PackageError::Key {
                file: p.display().to_string(),
                reason: "already exists; not overwriting a key".into(),
            });
        }
    }
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8));
    write_new(&key_path, pem.as_bytes(), 0o600).map_err(io(&key_path))?;
    let pub_text = format!("# ed25519 public key {name}, key id {}\n{}\n", key.key_id, hex(key.public()));
    write_new(&pub_path, pub_text.as_bytes(), 0o644).map_err(io(&pub_path))?;
    Ok((key_path, pub_path, key.key_id))
}

/// Creates `path` (it must not exist) with `mode`, writes `data` and
/// fsyncs it.
pub(crate) fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Reads a `NAME.pub` file: the 32-byte key as 64 hex digits.
pub fn read_public_key(path: &Path) -> Result<[u8; 32], PackageError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PackageError::Io { file: file.clone(), source })?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
    let token = line.split_whitespace().next().unwrap_or("");
    unhex(token)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| PackageError::Key { file, reason: "expected an Ed25519 public key as 64 hex digits".into() })
}

/// A trusted public key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// File stem of its `.pub` file.
    pub name: String,
    /// Its key id.
    pub key_id: String,
    /// The raw key.
    pub public: [u8; 32],
}

/// The trust store: the `*.pub` keys of a directory.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    /// Where it was read from.
    pub dir: PathBuf,
    /// Its keys.
    pub keys: Vec<TrustedKey>,
}

impl TrustStore {
    /// Reads every `*.pub` of `dir`. A missing directory is an empty store;
    /// an unreadable key file is an error naming it.
    pub fn load(dir: &Path) -> Result<TrustStore, PackageError> {
        let mut keys = Vec::new();
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TrustStore { dir: dir.to_path_buf(), keys });
            }
            Err(source) => return Err(PackageError::Io { file: dir.display().to_string(), source }),
        };
        let mut paths: Vec<PathBuf> =
            rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pub")).collect();
        paths.sort();
        for p in paths {
            let public = read_public_key(&p)?;
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            keys.push(TrustedKey { name, key_id: key_id(&public), public });
        }
        Ok(TrustStore { dir: dir.to_path_buf(), keys })
    }

    fn get(&self, key_id: &str) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }
}

/// Who signed a package, as checked against a trust store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Verified with a trusted key.
    Trusted { key_id: String, signer: String },
    /// By a key not in the store (cannot be verified).
    Unknown { key_id: String },
    /// By a trusted key, but it does not verify (tampered).
    Invalid { key_id: String, signer: String },
}

/// Checks each signature of `pkg` against `store`.
pub fn check_signatures(pkg: &Package, store: &TrustStore) -> Vec<SignatureCheck> {
    let msg = pkg.signed_message();
    pkg.signatures
        .iter()
        .map(|s| match store.get(&s.key_id) {
            None => SignatureCheck::Unknown { key_id: s.key_id.clone() },
            Some(k) => {
                let pk = signature::UnparsedPublicKey::new(&signature::ED25519, &k.public);
                if pk.verify(&msg, &s.signature).is_ok() {
                    SignatureCheck::Trusted { key_id: s.key_id.clone(), signer: k.name.clone() }
                } else {
                    SignatureCheck::Invalid { key_id: s.key_id.clone(), signer: k.name.clone() }
                }
            }
        })
        .collect()
}

/// Verifies `pkg` is signed by a trusted key: Ok(the signer's key) or the
/// reason it is not trusted. Any trusted signature that fails to verify
/// refuses the file, even if another verifies.
pub fn verify(file: &str, pkg: &Package, store: &TrustStore) -> Result<TrustedKey, PackageError> {
    if pkg.signatures.is_empty() {
        return Err(PackageError::Unsigned { file: file.into() });
    }
    let checks = check_signatures(pkg, store);
    if let Some(SignatureCheck::Invalid { key_id, signer }) =
        checks.iter().find(|c| matches!(c, SignatureCheck::Invalid { .. }))
    {
        return Err(PackageError::BadSignature { file: file.into(), key_id: key_id.clone(), signer: signer.clone() });
    }
    let trusted = checks.iter().find_map(|c| match c {
        SignatureCheck::Trusted { key_id, .. } => store.get(key_id).cloned(),
        _ => None,
    });
    match trusted {
        Some(k) if pkg.manifest.is_some() => Ok(k),
        Some(_) => Err(PackageError::NoManifest { file: file.into() }),
        None => Err(PackageError::Untrusted {
            file: file.into(),
            key_ids: pkg.signatures.iter().map(|s| s.key_id.as_str()).collect::<Vec<_>>().join(", "),
            trust_dir: if store.keys.is_empty() {
                format!("{} (no keys there)", store.dir.display())
            } else {
                store.dir.display().to_string()
            },
        }),
    }
}

/// The node's policy for `--plugin` files.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Trusted keys.
    pub trust: TrustStore,
    /// Accept unsigned plugins (and plugins signed by unknown keys); a
    /// signature by a trusted key that fails to verify is still refused.
    pub allow_unsigned: bool,
}

/// How a plugin was admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Signed by this trusted key.
    Signed { signer: String, key_id: String },
    /// Not verified; allowed by `--allow-unsigned-plugins`.
    Unverified,
}

/// Decides whether the node may load the plugin file `path` (bytes
/// `bytes`) as consensus type `wanted`: it must be signed by a trusted key
/// and its manifest must say `wanted`, unless `allow_unsigned` (then an
/// unverified plugin is admitted with a warning; a manifest, if present,
/// must still say `wanted`). The contract version is checked at load.
pub fn admit(policy: &Policy, wanted: &str, path: &Path, bytes: &[u8]) -> Result<Admission, PackageError> {
    let file = path.display().to_string();
    let pkg = Package::parse(&file, bytes)?;
    let check_type = |pkg: &Package| match &pkg.manifest {
        Some(m) if m.consensus_type != wanted => Err(PackageError::TypeMismatch {
            file: file.clone(),
            manifest: m.consensus_type.clone(),
            wanted: wanted.into(),
        }),
        _ => Ok(()),
    };
    match verify(&file, &pkg, &policy.trust) {
        Ok(k) => {
            check_type(&pkg)?;
            tracing::info!(plugin = %wanted, file = %file, signer = %k.name, key_id = %k.key_id, "plugin signature verified");
            Ok(Admission::Signed { signer: k.name, key_id: k.key_id })
        }
        Err(e @ (PackageError::Unsigned { .. } | PackageError::Untrusted { .. } | PackageError::NoManifest { .. }))
            if policy.allow_unsigned =>
        {
            check_type(&pkg)?;
            tracing::warn!(plugin = %wanted, file = %file, reason = %e, "loading an unverified plugin (--allow-unsigned-plugins)");
            Ok(Admission::Unverified)
        }
        Err(e) => Err(e),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{WIT_PACKAGE, WIT_PACKAGES};

    fn solo() -> Vec<u8> {
        std::fs::read(consenter_test_plugins::path("consenter_solo.wasm")).unwrap()
    }

    fn manifest(ctype: &str) -> Manifest {
        Manifest {
            name: "my solo".into(),
            version: "1.2.3".into(),
            wit: WIT_PACKAGE.into(),
            consensus_type: ctype.into(),
            capabilities: vec![],
        }
    }

    fn store_with(keys: &[&SigningKey]) -> TrustStore {
        TrustStore {
            dir: "/trust".into(),
            keys: keys
                .iter()
                .enumerate()
                .map(|(i, k)| TrustedKey {
                    name: format!("k{i}"),
                    key_id: k.key_id.clone(),
                    public: k.public().try_into().unwrap(),
                })
                .collect(),
        }
    }

    fn policy(keys: &[&SigningKey], allow_unsigned: bool) -> Policy {
        Policy { trust: store_with(keys), allow_unsigned }
    }

    #[test]
    fn sign_verify_round_trip() {
        let (key, _) = SigningKey::generate().unwrap();
        let signed = sign("solo.wasm", &solo(), &manifest("mysolo"), &key).unwrap();
        let pkg = Package::parse("signed.wasm", &signed).unwrap();
        assert_eq!(pkg.manifest, Some(manifest("mysolo")));
        assert_eq!(pkg.signatures.len(), 1);
        assert_eq!(pkg.signatures[0].key_id, key.key_id);
        // The signed prefix ends where the signature section begins.
        assert_eq!(
            &signed[pkg.signed_len..],
            custom_section(SIGNATURE_SECTION, pkg.signatures[0].to_text().as_bytes())
        );
        let k = verify("signed.wasm", &pkg, &store_with(&[&key])).unwrap();
        assert_eq!(k.key_id, key.key_id);
        let a = admit(&policy(&[&key], false), "mysolo", Path::new("signed.wasm"), &signed).unwrap();
        assert_eq!(a, Admission::Signed { signer: "k0".into(), key_id: key.key_id.clone() });
        // And it still is the same component to wasmtime.
        let pkg = check_contract("signed.wasm", &signed, WIT_PACKAGES).unwrap();
        assert!(pkg.exports.iter().any(|e| e == "fabric:consenter/chain@0.2.1"), "{:?}", pkg.exports);
        assert!(pkg.imports.iter().any(|e| e == "fabric:consenter/support@0.2.1"), "{:?}", pkg.imports);
        // Signing a signed file replaces its manifest and signature.
        let again = sign("signed.wasm", &signed, &manifest("other"), &key).unwrap();
        let p2 = Package::parse("again.wasm", &again).unwrap();
        assert_eq!(p2.signatures.len(), 1);
        assert_eq!(p2.manifest.unwrap().consensus_type, "other");
    }

    #[test]
    fn embedded_solo_carries_a_manifest() {
        let bytes = consenter_test_plugins::SOLO;
        let pkg = check_contract("solo", bytes, WIT_PACKAGES).unwrap();
        let m = pkg.manifest.expect("build.rs appends a manifest");
        assert_eq!(m.consensus_type, "solo");
        assert_eq!(m.wit, WIT_PACKAGE);
        assert!(pkg.signatures.is_empty());
    }

    #[test]
    fn key_id_is_sha256_prefix() {
        let (key, _) = SigningKey::generate().unwrap();
        assert_eq!(key.key_id, hex(&Sha256::digest(key.public())[..8]));
        assert_eq!(key.key_id.len(), 16);
    }

    #[test]
    fn tampered_component_byte_fails() {
        let (key, _) = SigningKey::generate().unwrap();
        let signed = sign("solo.wasm", &solo(), &manifest("mysolo"), &key).unwrap();
        // A byte in the middle of the component's code.
        let mut bad = signed.clone();
        let i = bad.len() / 2;
        bad[i] ^= 0x01;
        let err = match Package::parse("bad.wasm", &bad) {
            // The flip may break the binary structure itself; that is refused too.
            Err(e) => e,
            Ok(pkg) => verify("bad.wasm", &pkg, &store_with(&[&key])).unwrap_err(),
        };
        assert!(matches!(err, PackageError::BadSignature { .. } | PackageError::Malformed { .. }), "{err}");
        // A byte inside a data segment (content only, structure intact):
        // find the bytes of a string in the binary.
        let mut bad = signed.clone();
        let needle = b"writing block";
        let at = bad.windows(needle.len()).position(|w| w == needle).expect("a string of the sdk in the binary");
        bad[at] ^= 0x20;
        let pkg = Package::parse("bad.wasm", &bad).unwrap();
        let err = verify("bad.wasm", &pkg, &store_with(&[&key])).unwrap_err();
        assert!(matches!(err, PackageError::BadSignature { .. }), "{err}");
        assert!(err.to_string().contains("bad.wasm") && err.to_string().contains("modified after it was signed"));
        // Even --allow-unsigned-plugins does not accept a broken trusted signature.
        let err = admit(&policy(&[&key], true), "mysolo", Path::new("bad.wasm"), &bad).unwrap_err();
        assert!(matches!(err, PackageError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn tampered_manifest_fails() {
        let (key, _) = SigningKey::generate().unwrap();
        let signed = sign("solo.wasm", &solo(), &manifest("mysolo"), &key).unwrap();
        let needle = b"consensus-type=mysolo";
        let at = signed.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut bad = signed.clone();
        // Same length, another type: the structure stays valid.
        bad[at + needle.len() - 6..at + needle.len()].copy_from_slice(b"evil!!");
        let pkg = Package::parse("bad.wasm", &bad).unwrap();
        assert_eq!(pkg.manifest.as_ref().unwrap().consensus_type, "evil!!");
        let err = verify("bad.wasm", &pkg, &store_with(&[&key])).unwrap_err();
        assert!(matches!(err, PackageError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn appending_after_signatures_is_refused() {
        let (key, _) = SigningKey::generate().unwrap();
        let mut signed = sign("solo.wasm", &solo(), &manifest("mysolo"), &key).unwrap();
        signed.extend_from_slice(&custom_section("extra", b"unsigned stuff"));
        let err = Package::parse("x.wasm", &signed).unwrap_err();
        assert!(err.to_string().contains("follows the signatures"), "{err}");
    }

    #[test]
    fn untrusted_key_refused() {
        let (key, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let signed = sign("solo.wasm", &solo(), &manifest("mysolo"), &key).unwrap();
        let err = admit(&policy(&[&other], false), "mysolo", Path::new("s.wasm"), &signed).unwrap_err();
        assert!(matches!(err, PackageError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains(&key.key_id), "{err}");
        assert!(err.to_string().contains("s.wasm"), "{err}");
        // An empty store says so.
        let err = admit(&policy(&[], false), "mysolo", Path::new("s.wasm"), &signed).unwrap_err();
        assert!(err.to_string().contains("no keys there"), "{err}");
        // --allow-unsigned-plugins admits it as unverified.
        assert_eq!(
            admit(&policy(&[&other], true), "mysolo", Path::new("s.wasm"), &signed).unwrap(),
            Admission::Unverified
        );
    }

    #[test]
    fn unsigned_refused_unless_allowed() {
        let (key, _) = SigningKey::generate().unwrap();
        let bytes = solo();
        let err = admit(&policy(&[&key], false), "solo", Path::new("u.wasm"), &bytes).unwrap_err();
        assert!(matches!(err, PackageError::Unsigned { .. }), "{err}");
        assert!(err.to_string().contains("u.wasm") && err.to_string().contains("--allow-unsigned-plugins"));
        assert_eq!(admit(&policy(&[], true), "solo", Path::new("u.wasm"), &bytes).unwrap(), Admission::Unverified);
        // A manifest without a signature is still unsigned.
        let m = with_manifest("u.wasm", &bytes, &manifest("solo")).unwrap();
        let err = admit(&policy(&[&key], false), "solo", Path::new("u.wasm"), &m).unwrap_err();
        assert!(matches!(err, PackageError::Unsigned { .. }), "{err}");
    }

    #[test]
    fn consensus_type_mismatch_refused() {
        let (key, _) = SigningKey::generate().unwrap();
        let signed = sign("solo.wasm", &solo(), &manifest("solo"), &key).unwrap();
        let err = admit(&policy(&[&key], false), "raft", Path::new("s.wasm"), &signed).unwrap_err();
        assert!(matches!(err, PackageError::TypeMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("\"solo\"") && msg.contains("\"raft\"") && msg.contains("s.wasm"), "{msg}");
        // Also when unsigned plugins are allowed.
        let err = admit(&policy(&[], true), "raft", Path::new("s.wasm"), &signed).unwrap_err();
        assert!(matches!(err, PackageError::TypeMismatch { .. }), "{err}");
    }

    #[test]
    fn wrong_wit_version_refused_before_compile() {
        // The manifest claims another contract version: refused from the
        // manifest, naming both versions (no compile: the check parses).
        let mut m = manifest("solo");
        m.wit = "fabric:consenter@0.9.0".into();
        let bytes = with_manifest("solo.wasm", &solo(), &m).unwrap();
        let err = check_contract("solo@0.9", &bytes, WIT_PACKAGES).unwrap_err();
        assert!(matches!(err, PackageError::WitMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("fabric:consenter@0.9.0") && msg.contains("fabric:consenter@0.1.0"), "{msg}");
        // A component actually built for 0.9.0 (plugins/hostile-wit), no manifest.
        let hw = std::fs::read(consenter_test_plugins::path("consenter_hostile_wit.wasm")).unwrap();
        let err = check_contract("hostile-wit", &hw, WIT_PACKAGES).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PackageError::WitMismatch { .. }), "{msg}");
        assert!(msg.contains("fabric:consenter@0.9.0") && msg.contains("fabric:consenter@0.1.0"), "{msg}");
        // Patch versions are compatible.
        assert!(compatible("fabric:consenter@0.1.7", "fabric:consenter@0.1.0"));
        assert!(!compatible("fabric:consenter@1.1.0", "fabric:consenter@0.1.0"));
        assert!(!compatible("other:pkg@0.1.0", "fabric:consenter@0.1.0"));
    }

    #[test]
    fn lying_manifest_caught() {
        // hostile-wit is built for 0.9.0; a manifest claiming 0.1.0 does
        // not make it pass: its imports say 0.9.0.
        let hw = std::fs::read(consenter_test_plugins::path("consenter_hostile_wit.wasm")).unwrap();
        let bytes = with_manifest("hw.wasm", &hw, &manifest("solo")).unwrap();
        let err = check_contract("hw", &bytes, WIT_PACKAGES).unwrap_err();
        assert!(err.to_string().contains("fabric:consenter@0.9.0"), "{err}");
        // Signing refuses a manifest that does not match the component.
        let (key, _) = SigningKey::generate().unwrap();
        assert!(sign("hw.wasm", &hw, &manifest("solo"), &key).is_err());
        // A manifest claiming 0.2.3 on a 0.2.1 component: compatible with
        // the host, but not what the component uses.
        let mut m = manifest("solo");
        m.wit = "fabric:consenter@0.2.3".into();
        let bytes = with_manifest("s.wasm", &solo(), &m).unwrap();
        let err = check_contract("s", &bytes, WIT_PACKAGES).unwrap_err();
        assert!(matches!(err, PackageError::ManifestLies { .. }), "{err}");
    }

    #[test]
    fn manifest_parse_is_strict() {
        let m = manifest("solo");
        assert_eq!(Manifest::parse(m.to_text().as_bytes()).unwrap(), m);
        let mut with_caps = m.clone();
        with_caps.capabilities = vec!["cluster".into(), "storage".into()];
        assert_eq!(Manifest::parse(with_caps.to_text().as_bytes()).unwrap(), with_caps);
        for (text, want) in [
            ("name=a\nversion=1\nwit=fabric:consenter@0.1.0\n", "consensus-type is missing"),
            ("name=a\nname=b\n", "twice"),
            ("name=a\nversion=1\nwit=x\nconsensus-type=s\n", "not of the form"),
            ("bogus=1\n", "unknown key"),
            ("capability=network\n", "unknown capability"),
            ("just text\n", "expected key=value"),
        ] {
            let e = Manifest::parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let mut bad = manifest("so\nlo");
        assert!(with_manifest("f", &solo(), &bad).is_err());
        bad.consensus_type = "a=b".into();
        assert!(with_manifest("f", &solo(), &bad).is_err());
    }

    #[test]
    fn not_a_component_is_named() {
        let err = Package::parse("x.wasm", b"\0asm\x01\0\0\0").unwrap_err();
        assert!(err.to_string().contains("x.wasm") && err.to_string().contains("core wasm module"), "{err}");
        let err = Package::parse("y.txt", b"hello").unwrap_err();
        assert!(err.to_string().contains("y.txt"), "{err}");
        // A section size past the end.
        let mut b = COMPONENT_HEADER.to_vec();
        b.extend_from_slice(&[0, 0x7f, 1]);
        let err = Package::parse("z.wasm", &b).unwrap_err();
        assert!(err.to_string().contains("runs past the end"), "{err}");
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (kp, pp, id) = keygen(&dir.path().join("keys/alice")).unwrap();
        assert_eq!(kp, dir.path().join("keys/alice.key"));
        let key = SigningKey::read(&kp).unwrap();
        assert_eq!(key.key_id, id);
        assert_eq!(read_public_key(&pp).unwrap(), key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&kp).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Never overwritten.
        assert!(keygen(&dir.path().join("keys/alice")).unwrap_err().to_string().contains("already exists"));
        let store = TrustStore::load(&dir.path().join("keys")).unwrap();
        assert_eq!(store.keys.len(), 1);
        assert_eq!(store.keys[0].name, "alice");
        assert_eq!(store.keys[0].key_id, id);
        // A missing store is empty; a bad key file is named.
        assert!(TrustStore::load(&dir.path().join("nope")).unwrap().keys.is_empty());
        std::fs::write(dir.path().join("keys/bad.pub"), "zz\n").unwrap();
        let err = TrustStore::load(&dir.path().join("keys")).unwrap_err();
        assert!(err.to_string().contains("bad.pub"), "{err}");
        let err = SigningKey::read(&pp).unwrap_err();
        assert!(err.to_string().contains("alice.pub"), "{err}");
    }
}
