//! Uploads into a DiskImport (`source.upload`): the tokens that let a client in, and the
//! key the upload pod checks them with.
//!
//! ```text
//!   master key (operator: --upload-key-file; shared by replicas)
//!     └─ pod key = HMAC(master, "ido-upload-v1/" + DiskImport UID)
//!          ├─ Secret upload-key-<name>, mounted into the upload pod
//!          └─ token = base64url(claims) "." base64url(HMAC(pod key, claims))
//!               claims: {ns, name, uid, exp}
//! ```
//!
//! The operator issues tokens (to an `UploadTokenRequest` dry run, after a
//! SubjectAccessReview) and checks them at its upload endpoint before it forwards a
//! request; the upload pod checks them again with its pod key, which opens that one
//! DiskImport only. Nothing the pod holds lets anyone into another upload.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ido_api::DiskImport;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use ring::{hmac, rand::SecureRandom};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::job::{labels, owner_reference, short_name};

/// How long a token is accepted (CDI's: 5 minutes).
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// Where the pod key is mounted in the upload pod.
pub const KEY_DIR: &str = "/var/run/ido/upload";
/// The key's file in [`KEY_DIR`] (and its Secret's key).
pub const KEY_FILE: &str = "key";
/// The upload pod's port.
pub const PORT: u16 = 8443;
/// A token may be used this long after it expired (clock skew; CDI allows 10 s).
const LEEWAY_SECS: i64 = 10;

/// A 256-bit HMAC key (the master key, or one DiskImport's pod key).
#[derive(Clone, PartialEq, Eq)]
pub struct UploadKey([u8; 32]);

impl std::fmt::Debug for UploadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadKey(…)")
    }
}

/// Why a token is refused (the message never holds the token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the upload token is malformed")]
    Malformed,
    #[error("the upload token's signature is wrong (not issued for this upload)")]
    Signature,
    #[error("the upload token expired at {0}")]
    Expired(Timestamp),
    #[error("the upload token is for DiskImport {0}, not this one")]
    Other(String),
    #[error("the clone token grants cloning {0}, not this clone")]
    OtherClone(String),
}

/// What a token grants: an upload into DiskImport `ns/name` with this UID, until `exp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub ns: String,
    pub name: String,
    pub uid: String,
    /// Unix seconds.
    pub exp: i64,
}

impl UploadKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .expect("the system's random source");
        Self(k)
    }

    /// The key as hex (a file's content).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads a key from hex (64 digits; surrounding whitespace ignored). `what` names the
    /// input in the error, which never holds the content.
    pub fn from_hex(s: &str, what: &str) -> Result<Self, String> {
        let bytes = hex::decode(s.trim())
            .map_err(|_| format!("{what}: the upload key must be 64 hexadecimal digits"))?;
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{what}: the upload key must be 64 hexadecimal digits (32 bytes)"))?;
        Ok(Self(k))
    }

    /// Reads a key file (`--upload-key-file`, `--key-file`).
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let what = path.display().to_string();
        let s = std::fs::read_to_string(path).map_err(|e| format!("{what}: {e}"))?;
        Self::from_hex(&s, &what)
    }

    fn sign(&self, data: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), data)
    }

    /// The pod key of the DiskImport with `uid` (this key being the master key).
    pub fn pod_key(&self, uid: &str) -> UploadKey {
        let tag = self.sign(format!("ido-upload-v1/{uid}").as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(tag.as_ref());
        UploadKey(k)
    }

    /// A token for `di` valid for [`TOKEN_TTL`] from `now` (this key being the master key),
    /// and when it expires.
    pub fn issue(&self, di: &DiskImport, now: Timestamp) -> (String, Timestamp) {
        let exp = now + TOKEN_TTL;
        let claims = Claims {
            ns: di.metadata.namespace.clone().unwrap_or_default(),
            name: di.metadata.name.clone().unwrap_or_default(),
            uid: di.metadata.uid.clone().unwrap_or_default(),
            exp: exp.as_second(),
        };
        (self.pod_key(&claims.uid).token(&claims), exp)
    }

    /// A token of `claims` signed with this key (a pod key): what an upload server started
    /// by hand with that key takes (`ido upload-token`).
    pub fn token(&self, claims: &Claims) -> String {
        self.sign_claims(claims)
    }

    /// The claims of `token` if this key (a pod key) signed it and it has not expired.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claims, TokenError> {
        let claims: Claims = self.open(token)?;
        if now.as_second() > claims.exp + LEEWAY_SECS {
            return Err(TokenError::Expired(
                Timestamp::from_second(claims.exp).unwrap_or_default(),
            ));
        }
        Ok(claims)
    }

    /// The claims of `token` checked with the pod key its own claims name (this key being
    /// the master key): what the operator's upload endpoint does.
    pub fn verify_issued(&self, token: &str, now: Timestamp) -> Result<Claims, TokenError> {
        let body = token.split_once('.').ok_or(TokenError::Malformed)?.0;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        self.pod_key(&claims.uid).verify(token, now)
    }
}

/// The annotation of a DiskImport (or DataVolume) that clones a claim of another
/// namespace: the operator's webhook puts it there at creation, once a SubjectAccessReview
/// allowed the requester to clone from that namespace.
pub const CLONE_TOKEN: &str = "ido.dev/clone-token";

/// What a clone token grants: cloning claim `source` (`ns/name`) into DiskImport `target`
/// (`ns/name`) for an object created before `exp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneClaims {
    pub source: String,
    pub target: String,
    /// Unix seconds.
    pub exp: i64,
}

impl UploadKey {
    /// The key clone tokens are signed with (this key being the master key).
    fn clone_key(&self) -> UploadKey {
        let tag = self.sign(b"ido-clone-v1");
        let mut k = [0u8; 32];
        k.copy_from_slice(tag.as_ref());
        UploadKey(k)
    }

    /// A clone token of `source` into `target` (both `ns/name`), issued `now`.
    pub fn issue_clone(&self, source: &str, target: &str, now: Timestamp) -> String {
        let claims = CloneClaims {
            source: source.into(),
            target: target.into(),
            exp: (now + TOKEN_TTL).as_second(),
        };
        self.clone_key().sign_claims(&claims)
    }

    /// Whether `token` grants cloning `source` into `target` to an object created at
    /// `created`: issued for these two, at most [`TOKEN_TTL`] before the object was made
    /// (a token copied onto a later object is refused).
    pub fn check_clone(
        &self,
        token: &str,
        source: &str,
        target: &str,
        created: Timestamp,
    ) -> Result<(), TokenError> {
        let c: CloneClaims = self.clone_key().open(token)?;
        if c.source != source || c.target != target {
            return Err(TokenError::OtherClone(format!("{} into {}", c.source, c.target)));
        }
        if created.as_second() > c.exp + LEEWAY_SECS {
            return Err(TokenError::Expired(
                Timestamp::from_second(c.exp).unwrap_or_default(),
            ));
        }
        Ok(())
    }

    fn sign_claims(&self, claims: &impl Serialize) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let sig = URL_SAFE_NO_PAD.encode(self.sign(body.as_bytes()));
        format!("{body}.{sig}")
    }

    /// The claims of `token` if this key signed it.
    fn open<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), body.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)
    }
}

/// Name of the Secret holding the pod key of `di` (`<importer Job>-key`).
pub fn key_secret_name(di: &DiskImport) -> String {
    short_name(
        "upload-key-",
        di.metadata.name.as_deref().unwrap_or_default(),
        253,
    )
}

/// The Secret of the pod key of `di`, owned by it.
pub fn key_secret(di: &DiskImport, master: &UploadKey) -> Secret {
    let key = master.pod_key(di.metadata.uid.as_deref().unwrap_or_default());
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": key_secret_name(di),
            "namespace": di.metadata.namespace,
            "labels": labels(di),
            "ownerReferences": [owner_reference(di)],
        },
        "type": "Opaque",
        "stringData": {KEY_FILE: key.to_hex()},
    }))
    .expect("a valid Secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn di(uid: &str) -> DiskImport {
        let mut d = DiskImport::new(
            "fedora",
            serde_json::from_value(serde_json::json!({"source": {"upload": {}}})).unwrap(),
        );
        d.metadata.namespace = Some("vms".into());
        d.metadata.uid = Some(uid.into());
        d
    }

    #[test]
    fn tokens_open_one_disk_import_until_they_expire() {
        let master = UploadKey::generate();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (token, exp) = master.issue(&di("u-1"), now);
        assert_eq!(exp, now + TOKEN_TTL);
        let pod = master.pod_key("u-1");
        let c = pod.verify(&token, now).unwrap();
        assert_eq!(
            (c.ns.as_str(), c.name.as_str(), c.uid.as_str()),
            ("vms", "fedora", "u-1")
        );
        assert_eq!(master.verify_issued(&token, now).unwrap(), c);
        // Another DiskImport's pod key (same name, new UID) refuses it.
        assert_eq!(
            master.pod_key("u-2").verify(&token, now),
            Err(TokenError::Signature)
        );
        // Another master refuses it.
        assert_eq!(
            UploadKey::generate().verify_issued(&token, now),
            Err(TokenError::Signature)
        );
        // Expired (past the leeway).
        assert!(matches!(
            pod.verify(&token, exp + Duration::from_secs(11)),
            Err(TokenError::Expired(_))
        ));
        assert!(pod.verify(&token, exp + Duration::from_secs(9)).is_ok());
        // Claims edited: the signature no longer holds.
        let (body, sig) = token.split_once('.').unwrap();
        let mut claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        claims.exp += 3600;
        let forged = format!(
            "{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert_eq!(pod.verify(&forged, now), Err(TokenError::Signature));
        for bad in ["", "x", "a.b", "..."] {
            assert!(pod.verify(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn clone_tokens_name_source_and_target_and_hold_only_for_objects_made_in_time() {
        let master = UploadKey::generate();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let t = master.issue_clone("golden/fedora", "vms/disk", now);
        let later = now + Duration::from_secs(60);
        assert_eq!(master.check_clone(&t, "golden/fedora", "vms/disk", later), Ok(()));
        // Another source, another target, another master, a forged or pasted token.
        assert!(master.check_clone(&t, "golden/other", "vms/disk", later).is_err());
        assert!(
            master
                .check_clone(&t, "golden/fedora", "vms/other", later)
                .is_err()
        );
        assert_eq!(
            UploadKey::generate().check_clone(&t, "golden/fedora", "vms/disk", later),
            Err(TokenError::Signature)
        );
        // An object made after the token expired (a token copied onto it) is refused.
        assert!(matches!(
            master.check_clone(
                &t,
                "golden/fedora",
                "vms/disk",
                now + TOKEN_TTL + Duration::from_secs(11)
            ),
            Err(TokenError::Expired(_))
        ));
        // An upload token is no clone token, nor the other way round.
        let (upload, _) = master.issue(&di("u-1"), now);
        assert!(
            master
                .check_clone(&upload, "golden/fedora", "vms/disk", later)
                .is_err()
        );
        assert!(master.verify_issued(&t, now).is_err());
    }

    #[test]
    fn keys_round_trip_as_hex_and_never_show() {
        let k = UploadKey::generate();
        assert_eq!(UploadKey::from_hex(&format!("{}\n", k.to_hex()), "f").unwrap(), k);
        assert_eq!(format!("{k:?}"), "UploadKey(…)");
        let e = UploadKey::from_hex("abc", "/etc/key").unwrap_err();
        assert!(e.starts_with("/etc/key: "), "{e}");
        let s = key_secret(&di("u-1"), &k);
        assert_eq!(s.string_data.unwrap()[KEY_FILE], k.pod_key("u-1").to_hex());
        assert_eq!(s.metadata.name.as_deref(), Some("upload-key-fedora"));
    }
}
