//! Signed packets: a DSSE envelope (`payloadType` application/vnd.in-toto+json, the statement
//! as base64 `payload`, Ed25519 signatures over the DSSE pre-authentication encoding), the key
//! pair `vigil keygen` writes, and the checks of `vigil verify-promotion`.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

#[derive(Debug, thiserror::Error)]
pub enum DsseError {
    #[error("{path}: {error}")]
    Key { path: String, error: String },
    #[error("not a DSSE envelope or in-toto statement: {0}")]
    NotAPacket(String),
    #[error("signature does not verify with key {0}")]
    BadSignature(String),
    #[error("the packet is signed: give --key to check it")]
    Signed,
    #[error("the packet is not signed, but --key asks for a signature")]
    Unsigned,
}

/// DSSE v1 pre-authentication encoding.
fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A key's id: the first 16 bytes of the SHA-256 of its public key, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

/// Write PREFIX.key (the 32-byte seed, base64, mode 0600, created new) and PREFIX.pub.
pub fn keygen(prefix: &Path) -> Result<String, DsseError> {
    let mut seed = [0u8; 32];
    let key_err = |p: &Path, e: String| DsseError::Key {
        path: p.display().to_string(),
        error: e,
    };
    getrandom::fill(&mut seed).map_err(|e| key_err(prefix, e.to_string()))?;
    let sk = SigningKey::from_bytes(&seed);
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&secret)
        .map_err(|e| key_err(&secret, e.to_string()))?;
    f.write_all(format!("{}\n", B64.encode(seed)).as_bytes())
        .map_err(|e| key_err(&secret, e.to_string()))?;
    let vk = sk.verifying_key();
    std::fs::write(&public, format!("{}\n", B64.encode(vk.as_bytes())))
        .map_err(|e| key_err(&public, e.to_string()))?;
    Ok(key_id(&vk))
}

fn read_32(path: &Path) -> Result<[u8; 32], DsseError> {
    let err = |e: String| DsseError::Key {
        path: path.display().to_string(),
        error: e,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| err(format!("not base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| err("expected 32 bytes (a key from `vigil keygen`)".into()))
}

pub fn signing_key(path: &Path) -> Result<SigningKey, DsseError> {
    Ok(SigningKey::from_bytes(&read_32(path)?))
}

pub fn verifying_key(path: &Path) -> Result<VerifyingKey, DsseError> {
    VerifyingKey::from_bytes(&read_32(path)?).map_err(|e| DsseError::Key {
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

/// Wrap `statement` in an envelope signed with `key`.
pub fn sign(statement: &Value, key: &SigningKey) -> Value {
    let body = serde_json::to_vec(statement).unwrap_or_default();
    let sig = key.sign(&pae(PAYLOAD_TYPE, &body));
    json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": B64.encode(&body),
        "signatures": [{"keyid": key_id(&key.verifying_key()), "sig": B64.encode(sig.to_bytes())}],
    })
}

/// The statement of a packet: itself, or an envelope's payload (signature not checked).
pub fn statement_of(packet: &Value) -> Result<Value, DsseError> {
    if packet.get("_type").is_some() {
        return Ok(packet.clone());
    }
    let payload = packet["payload"]
        .as_str()
        .ok_or_else(|| DsseError::NotAPacket("no _type and no payload".into()))?;
    let body = B64
        .decode(payload)
        .map_err(|e| DsseError::NotAPacket(format!("payload: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| DsseError::NotAPacket(format!("payload: {e}")))
}

/// Check a packet's signature with `key` (when given): the statement it vouches for.
pub fn verify(packet: &Value, key: Option<&VerifyingKey>) -> Result<Value, DsseError> {
    let signed = packet.get("payload").is_some();
    match (signed, key) {
        (false, None) => return statement_of(packet),
        (false, Some(_)) => return Err(DsseError::Unsigned),
        (true, None) => return Err(DsseError::Signed),
        (true, Some(_)) => {}
    }
    let key = key.ok_or(DsseError::Signed)?;
    if packet["payloadType"] != PAYLOAD_TYPE {
        return Err(DsseError::NotAPacket(format!(
            "payloadType {}; accepted: {PAYLOAD_TYPE}",
            packet["payloadType"]
        )));
    }
    let body = B64
        .decode(packet["payload"].as_str().unwrap_or(""))
        .map_err(|e| DsseError::NotAPacket(format!("payload: {e}")))?;
    let message = pae(PAYLOAD_TYPE, &body);
    let ok = packet["signatures"].as_array().is_some_and(|sigs| {
        sigs.iter().any(|s| {
            B64.decode(s["sig"].as_str().unwrap_or(""))
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok())
                .is_some_and(|sig| key.verify(&message, &sig).is_ok())
        })
    });
    if !ok {
        return Err(DsseError::BadSignature(key_id(key)));
    }
    serde_json::from_slice(&body).map_err(|e| DsseError::NotAPacket(format!("payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_statement_verifies_with_its_key_only_and_not_when_changed() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let st = json!({"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicate": {"a": 1}});
        let env = sign(&st, &sk);
        assert_eq!(verify(&env, Some(&sk.verifying_key())).expect("ok"), st);
        assert!(matches!(
            verify(&env, Some(&other.verifying_key())),
            Err(DsseError::BadSignature(_))
        ));
        let mut tampered = env.clone();
        let changed =
            serde_json::to_vec(&json!({"_type": "x", "predicate": {"a": 2}})).expect("json");
        tampered["payload"] = B64.encode(changed).into();
        assert!(verify(&tampered, Some(&sk.verifying_key())).is_err());
        assert!(matches!(verify(&env, None), Err(DsseError::Signed)));
        assert!(matches!(
            verify(&st, Some(&sk.verifying_key())),
            Err(DsseError::Unsigned)
        ));
        // PAE as the DSSE spec writes it.
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab");
    }
}
