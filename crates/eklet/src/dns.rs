//! The `eks.tke.cloud.tencent.com/resolv-conf` annotation (seed §7): full `/etc/resolv.conf`
//! content for sandboxes, on the virtual node (all pods created afterwards) or on a pod (wins
//! over the node's). Parsed strictly, so a typo is reported instead of breaking name resolution
//! in the cloud.

use std::net::IpAddr;

use crate::provider::DnsSpec;

/// The annotation, on nodes and pods.
pub const RESOLV_CONF_ANNOTATION: &str = "eks.tke.cloud.tencent.com/resolv-conf";

/// glibc reads at most three nameservers and six search domains; more is a mistake worth
/// reporting rather than silently truncating.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("line {line}: nameserver {value:?} is not an IP address")]
    Nameserver { line: usize, value: String },
    #[error("line {line}: {keyword} needs a value")]
    MissingValue { line: usize, keyword: String },
    #[error(
        "line {line}: unknown keyword {keyword:?} (expected nameserver, search, domain, options, sortlist)"
    )]
    Keyword { line: usize, keyword: String },
    #[error("more than {MAX_NAMESERVERS} nameservers")]
    TooManyNameservers,
    #[error("more than {MAX_SEARCHES} search domains")]
    TooManySearches,
    #[error("no nameserver")]
    NoNameserver,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses resolv.conf content.
pub fn parse(content: &str) -> Result<DnsSpec> {
    let mut spec = DnsSpec::default();
    for (index, raw) in content.lines().enumerate() {
        let line = index + 1;
        let text = raw.split(['#', ';']).next().unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        let mut words = text.split_whitespace();
        let Some(keyword) = words.next() else { continue };
        let values: Vec<&str> = words.collect();
        let missing = || Error::MissingValue {
            line,
            keyword: keyword.to_owned(),
        };
        match keyword {
            "nameserver" => {
                let value = values.first().ok_or_else(missing)?;
                value.parse::<IpAddr>().map_err(|_| Error::Nameserver {
                    line,
                    value: (*value).to_owned(),
                })?;
                spec.nameservers.push((*value).to_owned());
            }
            // `domain` and `search` are mutually exclusive; the last one wins, as in glibc.
            "search" | "domain" => {
                if values.is_empty() {
                    return Err(missing());
                }
                spec.searches = values.iter().map(|s| (*s).to_owned()).collect();
            }
            "options" => {
                if values.is_empty() {
                    return Err(missing());
                }
                for option in values {
                    let (name, value) = option.split_once(':').unwrap_or((option, ""));
                    spec.options.push((name.to_owned(), value.to_owned()));
                }
            }
            // Accepted for compatibility; sandboxes have a single interface.
            "sortlist" => {}
            other => {
                return Err(Error::Keyword {
                    line,
                    keyword: other.to_owned(),
                });
            }
        }
    }
    if spec.nameservers.is_empty() {
        return Err(Error::NoNameserver);
    }
    if spec.nameservers.len() > MAX_NAMESERVERS {
        return Err(Error::TooManyNameservers);
    }
    if spec.searches.len() > MAX_SEARCHES {
        return Err(Error::TooManySearches);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_example_sets_two_nameservers() {
        let spec = parse("nameserver 4.4.4.4\nnameserver 8.8.8.8\n").unwrap();
        assert_eq!(spec.nameservers, vec!["4.4.4.4", "8.8.8.8"]);
        assert!(spec.searches.is_empty() && spec.options.is_empty());
    }

    #[test]
    fn search_options_and_comments_are_understood() {
        let spec = parse(
            "# cloud DNS\nnameserver 183.60.83.19 ; primary\nsearch default.svc.cluster.local svc.cluster.local\n\
             options ndots:5 rotate\n",
        )
        .unwrap();
        assert_eq!(
            spec.searches,
            vec!["default.svc.cluster.local", "svc.cluster.local"]
        );
        assert_eq!(
            spec.options,
            vec![("ndots".into(), "5".into()), ("rotate".into(), String::new())]
        );
    }

    #[test]
    fn malformed_content_is_reported_with_its_line() {
        assert_eq!(
            parse("nameserver 4.4.4.4\nnameserver dns.google\n"),
            Err(Error::Nameserver {
                line: 2,
                value: "dns.google".into()
            })
        );
        assert_eq!(
            parse("nameservers 1.1.1.1"),
            Err(Error::Keyword {
                line: 1,
                keyword: "nameservers".into()
            })
        );
        assert_eq!(
            parse("nameserver"),
            Err(Error::MissingValue {
                line: 1,
                keyword: "nameserver".into()
            })
        );
        assert_eq!(parse("search a.b\n"), Err(Error::NoNameserver));
        assert_eq!(parse(""), Err(Error::NoNameserver));
        assert_eq!(
            parse("nameserver 1.1.1.1\n".repeat(4).as_str()),
            Err(Error::TooManyNameservers)
        );
    }
}
