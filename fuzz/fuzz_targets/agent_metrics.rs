//! Feeds arbitrary input to the sandbox agent's metrics parser and to the metrics-port annotation
//! parser: neither may panic, the same text must always give the same answer, and what `parse`
//! accepts must obey its contract (no pause-container or unnamed series, no container twice), with
//! `parse_page` (usage and readiness) agreeing with it.

#![no_main]

use std::collections::{BTreeMap, HashSet};

use libfuzzer_sys::fuzz_target;
use tke_tencent::agent::{DEFAULT_METRICS_PORT, METRICS_PORT_ANNOTATION, metrics_port, parse, parse_page};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(usage) => {
            let mut names = HashSet::new();
            for container in &usage {
                assert!(!container.name.is_empty() && container.name != "POD");
                assert!(names.insert(container.name.as_str()), "{} twice", container.name);
            }
            assert_eq!(parse(&text).ok(), Some(usage), "parse is deterministic");
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }

    // The page parser agrees with the usage parser and names no pause or unnamed container ready.
    match parse_page(&text) {
        Ok(page) => {
            assert_eq!(parse(&text).ok(), Some(page.usage));
            assert!(page.ready.keys().all(|name| !name.is_empty() && name != "POD"));
        }
        Err(_) => assert!(parse(&text).is_err(), "parse and parse_page fail together"),
    }

    let annotations = BTreeMap::from([(METRICS_PORT_ANNOTATION.to_string(), text.into_owned())]);
    if let Ok(port) = metrics_port(&annotations, DEFAULT_METRICS_PORT) {
        assert_ne!(port, 0);
    }
});
