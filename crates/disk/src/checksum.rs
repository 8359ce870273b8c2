//! Checksums over the source bytes (as fetched, before any decompression): `ALG:HEX`.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

use crate::{Error, Result};

/// A supported digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (legacy, still published by many mirrors).
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The prefix used in `ALG:HEX`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// An expected checksum, parsed from `sha256:…`, `sha512:…`, `sha1:…` or `md5:…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The expected digest bytes.
    pub digest: Vec<u8>,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), hex::encode(&self.digest))
    }
}

impl FromStr for Checksum {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidArgument {
            field: "checksum",
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (alg, hex_digest) = s.split_once(':').ok_or_else(|| bad("expected ALG:HEX"))?;
        let algorithm = match alg.to_ascii_lowercase().as_str() {
            "md5" => Algorithm::Md5,
            "sha1" => Algorithm::Sha1,
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(bad("algorithm must be md5, sha1, sha256 or sha512")),
        };
        let digest = hex::decode(hex_digest.trim()).map_err(|_| bad("digest is not hex"))?;
        if digest.len() != algorithm.digest_len() {
            return Err(bad(&format!(
                "a {} digest has {} hex digits",
                algorithm.name(),
                algorithm.digest_len() * 2
            )));
        }
        Ok(Checksum { algorithm, digest })
    }
}

/// A running hash of one of the [`Algorithm`]s.
#[derive(Clone)]
pub enum Hasher {
    /// MD5.
    Md5(md5::Md5),
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-512.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The running state, as hex: what [`Hasher::restore`] continues from in a later run
    /// (the hash crates' own serialisation of their internal state).
    pub fn state(&self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.serialize()),
            Hasher::Sha1(h) => hex::encode(h.serialize()),
            Hasher::Sha256(h) => hex::encode(h.serialize()),
            Hasher::Sha512(h) => hex::encode(h.serialize()),
        }
    }

    /// A hasher continuing from a [`Hasher::state`] of the same algorithm.
    pub fn restore(algorithm: Algorithm, state: &str) -> Result<Self> {
        fn de<T: SerializableState>(bytes: &[u8]) -> Option<T> {
            let state = SerializedState::<T>::try_from(bytes).ok()?;
            T::deserialize(&state).ok()
        }
        let bytes = hex::decode(state).unwrap_or_default();
        let h = match algorithm {
            Algorithm::Md5 => de(&bytes).map(Hasher::Md5),
            Algorithm::Sha1 => de(&bytes).map(Hasher::Sha1),
            Algorithm::Sha256 => de(&bytes).map(Hasher::Sha256),
            Algorithm::Sha512 => de(&bytes).map(Hasher::Sha512),
        };
        h.ok_or_else(|| Error::InvalidArgument {
            field: "checksum state",
            value: format!("{} bytes", bytes.len()),
            reason: format!("not a saved {} state", algorithm.name()),
        })
    }

    /// The digest.
    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

impl Checksum {
    /// Compares a computed digest with this expectation.
    pub fn verify(&self, actual: &[u8]) -> Result<()> {
        if actual == self.digest.as_slice() {
            Ok(())
        } else {
            Err(Error::ChecksumMismatch {
                algorithm: self.algorithm.name(),
                expected: hex::encode(&self.digest),
                actual: hex::encode(actual),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies() {
        let c: Checksum = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        c.verify(&Hasher::new(Algorithm::Sha256).finish()).unwrap();
        let md5: Checksum = "MD5:d41d8cd98f00b204e9800998ecf8427e".parse().unwrap();
        md5.verify(&Hasher::new(Algorithm::Md5).finish()).unwrap();
        let err = md5.verify(&[0; 16]).unwrap_err();
        assert_eq!(err.label(), "checksum_mismatch");
    }

    #[test]
    fn a_saved_state_continues_to_the_same_digest() {
        for alg in [
            Algorithm::Md5,
            Algorithm::Sha1,
            Algorithm::Sha256,
            Algorithm::Sha512,
        ] {
            let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
            let mut whole = Hasher::new(alg);
            whole.update(&data);
            let mut first = Hasher::new(alg);
            first.update(&data[..333]);
            let mut second = Hasher::restore(alg, &first.state()).unwrap();
            second.update(&data[333..]);
            assert_eq!(second.finish(), whole.finish(), "{}", alg.name());
            let err = Hasher::restore(alg, "00ff").err().unwrap();
            assert!(err.to_string().contains(alg.name()), "{err}");
        }
        let sha1 = Hasher::new(Algorithm::Sha1).state();
        assert!(Hasher::restore(Algorithm::Sha256, &sha1).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["sha256", "crc32:00", "sha1:zz", "sha1:00"] {
            assert!(bad.parse::<Checksum>().is_err(), "{bad}");
        }
    }
}
