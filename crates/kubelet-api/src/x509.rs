//! The subject of a client certificate, read as the kubelet's x509 authenticator reads it: the
//! common name is the user, each organisation a group. Only certificates that rustls has already
//! verified against the client CA reach this parser, so it reads just enough DER to find the
//! subject and treats anything unexpected as "no identity" instead of guessing.

/// The identity a client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0] EXPLICIT Version` in a TBSCertificate.
const VERSION: u8 = 0xa0;
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// The subject of a DER certificate, or `None` when it has no common name or is not a
/// certificate.
pub fn subject(certificate: &[u8]) -> Option<Subject> {
    let (certificate, _) = expect(certificate, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == VERSION {
        rest = after;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        let (_, _, after) = tlv(rest)?;
        rest = after;
    }
    let (name, _) = expect(rest, SEQUENCE)?;

    let mut common_name = None;
    let mut organizations = Vec::new();
    let mut rdns = name;
    while !rdns.is_empty() {
        let (set, after) = expect(rdns, SET)?;
        rdns = after;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, after) = expect(attributes, SEQUENCE)?;
            attributes = after;
            let (oid, value) = expect(attribute, OID)?;
            let (tag, value, _) = tlv(value)?;
            let Some(text) = string(tag, value) else {
                continue;
            };
            // Go's pkix.Name keeps the last common name it meets.
            if oid == COMMON_NAME {
                common_name = Some(text);
            } else if oid == ORGANIZATION {
                organizations.push(text);
            }
        }
    }
    let common_name = common_name.filter(|cn| !cn.is_empty())?;
    Some(Subject {
        common_name,
        organizations,
    })
}

/// Splits one DER element off `input`: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // High-tag-number form never occurs in the structures read here.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let length = bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, rest)
    };
    let (contents, rest) = rest.split_at_checked(length)?;
    Some((tag, contents, rest))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = tlv(input)?;
    (found == tag).then_some((contents, rest))
}

/// Directory-string types as text; other types are skipped, as Go skips what it cannot decode.
fn string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => String::from_utf8(value.to_vec()).ok(),
        // TeletexString, read as Latin-1
        0x14 => Some(value.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UTF-16BE
        0x1e if value.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .filter_map(|pair| match pair {
                    [high, low] => Some(u16::from_be_bytes([*high, *low])),
                    _ => None,
                })
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn certificate(common_name: Option<&str>, organizations: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for organization in organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *organization);
        }
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        cert.der().to_vec()
    }

    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match u8::try_from(contents.len()) {
            Ok(len) if len < 0x80 => out.push(len),
            _ => {
                let len = u16::try_from(contents.len()).unwrap_or_else(|e| panic!("{e}"));
                out.push(0x82);
                out.extend(len.to_be_bytes());
            }
        }
        out.extend(contents);
        out
    }

    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        der(SET, &der(SEQUENCE, &[der(OID, oid), der(tag, value)].concat()))
    }

    #[test]
    fn the_common_name_is_the_user_and_each_organisation_a_group() {
        // rcgen keeps one value per attribute type, so a subject with two organisations is built
        // by hand: version, serial, algorithm, issuer, validity, then the subject.
        let subject_name = [
            attribute(ORGANIZATION, 0x13, b"system:masters"),
            attribute(COMMON_NAME, 0x0c, b"kube-apiserver-kubelet-client"),
            attribute(ORGANIZATION, 0x0c, "ops-\u{e9}quipe".as_bytes()),
        ]
        .concat();
        let tbs = [
            der(VERSION, &der(0x02, &[2])),
            der(0x02, &[1]),
            der(SEQUENCE, &[]),
            der(SEQUENCE, &[]),
            der(SEQUENCE, &[]),
            der(SEQUENCE, &subject_name),
        ]
        .concat();
        let certificate = der(SEQUENCE, &[der(SEQUENCE, &tbs), der(SEQUENCE, &[])].concat());
        assert_eq!(
            subject(&certificate),
            Some(Subject {
                common_name: "kube-apiserver-kubelet-client".into(),
                organizations: vec!["system:masters".into(), "ops-\u{e9}quipe".into()],
            })
        );
    }

    #[test]
    fn a_real_certificate_names_its_user_and_group() {
        let der = certificate(Some("alice"), &["system:masters"]);
        assert_eq!(
            subject(&der),
            Some(Subject {
                common_name: "alice".into(),
                organizations: vec!["system:masters".into()],
            })
        );
    }

    #[test]
    fn a_certificate_without_a_common_name_carries_no_identity() {
        assert_eq!(subject(&certificate(None, &["system:masters"])), None);
    }

    #[test]
    fn a_truncated_certificate_carries_no_identity() {
        let der = certificate(Some("alice"), &[]);
        assert!(subject(&der).is_some());
        for cut in 0..der.len() {
            assert_eq!(der.get(..cut).and_then(subject), None, "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = subject(&bytes);
        }
    }
}
