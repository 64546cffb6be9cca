//! `ce-signature`: `sha256=<hex(HMAC-SHA256(key string bytes, connection id))>` per access key,
//! comma-joined. Only the connection id is signed (see reference §4), so this proves the sender
//! holds a key — the body's integrity is TLS's job.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::ProtocolError;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &str, connection_id: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = HmacSha256::new_from_slice(key.as_bytes()).expect("hmac takes any key length");
    m.update(connection_id.as_bytes());
    m.finalize().into_bytes().into()
}

/// The header value the service would send for `connection_id`, one entry per key (primary first).
pub fn sign<'a>(keys: impl IntoIterator<Item = &'a str>, connection_id: &str) -> String {
    keys.into_iter()
        .map(|k| format!("sha256={}", hex::encode(mac(k, connection_id))))
        .collect::<Vec<_>>()
        .join(",")
}

/// How many `sha256=` entries of one `ce-signature` are compared (the service sends one per key).
const MAX_OFFERED: usize = 8;

/// Checks `ce-signature` against every key we hold. Keys are kept as precomputed HMAC states so a
/// webhook costs one HMAC finalisation per key, not a key schedule.
#[derive(Clone)]
pub struct SignatureVerifier {
    keys: Vec<HmacSha256>,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignatureVerifier({} keys)", self.keys.len())
    }
}

impl SignatureVerifier {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        let keys = keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .map(|k| HmacSha256::new_from_slice(k.as_bytes()).expect("hmac takes any key length"))
            .collect();
        SignatureVerifier { keys }
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// `header_values` are all `ce-signature` header lines; repeated lines are treated as one
    /// comma-joined list. Hex is compared case-insensitively and in constant time.
    pub fn verify<'a>(
        &self,
        header_values: impl IntoIterator<Item = &'a [u8]>,
        connection_id: &str,
    ) -> Result<(), ProtocolError> {
        // The digests offered, on the stack: the service sends one per access key (two at
        // most), and a webhook should not cost an allocation for them. Entries past
        // `MAX_OFFERED` are not compared; a request needing one of them is refused.
        let mut offered = [[0u8; 32]; MAX_OFFERED];
        let mut count = 0;
        let mut any = false;
        for line in header_values {
            for entry in line.split(|b| *b == b',') {
                let entry = entry.trim_ascii();
                if entry.is_empty() {
                    continue;
                }
                any = true;
                let Some(hexpart) = strip_prefix_ci(entry, b"sha256=") else {
                    continue;
                };
                if count < MAX_OFFERED && hex::decode_to_slice(hexpart, &mut offered[count]).is_ok()
                {
                    count += 1;
                }
            }
        }
        if !any {
            return Err(ProtocolError::MissingSignature);
        }
        let mut ok = subtle::Choice::from(0u8);
        for key in &self.keys {
            let mut m = key.clone();
            m.update(connection_id.as_bytes());
            let expected: [u8; 32] = m.finalize().into_bytes().into();
            for o in &offered[..count] {
                ok |= expected.ct_eq(o);
            }
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(ProtocolError::BadSignature)
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
    const K2: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";
    const CID: &str = "0f9c97a2f0bf4706afe87a14e0797b11";
    const SIG1: &str = "sha256=8805d739a12d46f22bcb15382a8c1c2bf38ae8f04566017bd613d5ef47cafe2c";
    const SIG2: &str = "sha256=3a56e6c1afb7a7afba9a054ef8589e97442e7bef351f92ebc010953c3848a562";
    const WRONG_B64_KEY: &str =
        "sha256=8101e49ec447cb2ecc2a971295f41b52609c588eca2add316535f12ac8edde94";

    #[test]
    fn signs_the_reference_example() {
        assert_eq!(sign([K1, K2], CID), format!("{SIG1},{SIG2}"));
    }

    #[test]
    fn accepts_either_key_for_rotation() {
        let both = format!("{SIG1},{SIG2}");
        for keys in [vec![K1], vec![K2], vec![K1, K2], vec![K2, K1]] {
            let v = SignatureVerifier::new(keys.iter().copied());
            assert_eq!(v.verify([both.as_bytes()], CID), Ok(()));
        }
        // only the secondary's entry present, verifier holds the secondary
        assert_eq!(
            SignatureVerifier::new([K2]).verify([SIG2.as_bytes()], CID),
            Ok(())
        );
        assert_eq!(
            SignatureVerifier::new([K1]).verify([SIG2.as_bytes()], CID),
            Err(ProtocolError::BadSignature)
        );
    }

    #[test]
    fn accepts_repeated_lines_spaces_and_upper_case_hex() {
        let v = SignatureVerifier::new([K2]);
        let upper = format!("SHA256={}", SIG2[7..].to_uppercase());
        assert_eq!(
            v.verify([SIG1.as_bytes(), format!("  {upper} ").as_bytes()], CID),
            Ok(())
        );
        assert_eq!(
            v.verify([format!("{SIG1} , {SIG2}").as_bytes()], CID),
            Ok(())
        );
    }

    /// The first `MAX_OFFERED` well-formed digests are compared, the rest not: a valid one
    /// behind as many wrong ones is refused, within them it is found.
    #[test]
    fn compares_at_most_max_offered_digests() {
        let v = SignatureVerifier::new([K1]);
        let wrong = [WRONG_B64_KEY; MAX_OFFERED - 1];
        let within = format!("{},{SIG1}", wrong.join(","));
        assert_eq!(v.verify([within.as_bytes()], CID), Ok(()));
        let behind = format!("{},{WRONG_B64_KEY},{SIG1}", wrong.join(","));
        assert_eq!(
            v.verify([behind.as_bytes()], CID),
            Err(ProtocolError::BadSignature)
        );
        // Malformed entries take no place.
        let junk = format!("{},{SIG1}", ["sha256=zz"; 20].join(","));
        assert_eq!(v.verify([junk.as_bytes()], CID), Ok(()));
    }

    #[test]
    fn rejects_missing_wrong_and_garbage() {
        let v = SignatureVerifier::new([K1, K2]);
        assert_eq!(
            v.verify(std::iter::empty(), CID),
            Err(ProtocolError::MissingSignature)
        );
        assert_eq!(
            v.verify([b" , ".as_slice()], CID),
            Err(ProtocolError::MissingSignature)
        );
        assert_eq!(
            v.verify([WRONG_B64_KEY.as_bytes()], CID),
            Err(ProtocolError::BadSignature)
        );
        assert_eq!(
            v.verify([SIG1.as_bytes()], "other"),
            Err(ProtocolError::BadSignature)
        );
        for junk in [
            "sha256=",
            "sha256=zz",
            "md5=abc",
            "sha256=8805d739",
            "\u{0}\u{ff}",
        ] {
            assert_eq!(
                v.verify([junk.as_bytes()], CID),
                Err(ProtocolError::BadSignature),
                "{junk}"
            );
        }
        let truncated = &SIG1[..SIG1.len() - 2];
        assert_eq!(
            v.verify([truncated.as_bytes()], CID),
            Err(ProtocolError::BadSignature)
        );
        assert_eq!(
            SignatureVerifier::new([]).verify([SIG1.as_bytes()], CID),
            Err(ProtocolError::BadSignature)
        );
    }
}
