//! The kube-scheduler extender wire format (`k8s.io/kube-scheduler/extender/v1`) for the filter
//! verb. The Go structs have no JSON tags, so the field names are the Go names (`Pod`, `NodeNames`)
//! and Go decodes them case-insensitively; the embedded Pod is ordinary Kubernetes JSON, usually
//! without `apiVersion`/`kind` because it comes from an informer. Decoding here is as forgiving as
//! Go's on those points and strict everywhere else, with errors that say what was wrong.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error(
        "the body is {0}, not a JSON object; kube-scheduler sends ExtenderArgs {{Pod, Nodes, NodeNames}}"
    )]
    NotAnObject(&'static str),
    #[error("ExtenderArgs has no Pod")]
    NoPod,
    #[error("ExtenderArgs.Pod is not a valid Pod: {0}")]
    BadPod(#[source] serde_json::Error),
    #[error("ExtenderArgs.NodeNames must be null or an array of strings; {0}")]
    BadNodeNames(String),
    #[error("ExtenderArgs.Nodes must be null or a NodeList; {0}")]
    BadNodes(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kube-scheduler asks the filter verb: may `pod` go to any of these nodes?
#[derive(Debug, Clone)]
pub struct ExtenderArgs {
    pub pod: Pod,
    pub candidates: Candidates,
}

/// The nodes that passed kube-scheduler's own filters, in the form the scheduler sent them; the
/// answer must use the same form.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidates {
    /// `nodeCacheCapable: true`: node names only.
    Names(Vec<String>),
    /// `nodeCacheCapable: false`: whole Node objects, kept as the JSON that came in so the ones
    /// that pass go back unchanged.
    Nodes(Vec<(String, Value)>),
    /// Both `null`: nothing to choose from.
    Nothing,
}

impl Candidates {
    /// The candidate node names, in the order the scheduler sent them.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Candidates::Names(names) => names.iter().map(String::as_str).collect(),
            Candidates::Nodes(nodes) => nodes.iter().map(|(name, _)| name.as_str()).collect(),
            Candidates::Nothing => Vec::new(),
        }
    }
}

/// What the filter verb answers. Field names are the Go names; Go reads them back
/// case-insensitively either way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    /// The passing nodes as a NodeList, when the scheduler sent Node objects.
    pub nodes: Option<Value>,
    /// The passing node names, when the scheduler sent names.
    pub node_names: Option<Vec<String>>,
    /// Nodes rejected for a reason that preemption could change.
    #[serde(default)]
    pub failed_nodes: BTreeMap<String, String>,
    /// Nodes rejected for a reason preemption cannot change; kube-scheduler does not try to
    /// preempt pods there.
    #[serde(default)]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    /// A non-empty error fails the scheduling attempt.
    #[serde(default)]
    pub error: String,
}

impl ExtenderFilterResult {
    /// An answer that fails the scheduling attempt with `message`.
    pub fn error(message: impl Into<String>) -> ExtenderFilterResult {
        ExtenderFilterResult {
            error: message.into(),
            ..ExtenderFilterResult::default()
        }
    }

    /// An answer that lets the `passing` candidates through, in the candidates' own form.
    pub fn passing(candidates: &Candidates, passing: &[&str]) -> ExtenderFilterResult {
        // A set, not a scan of the slice: both sides can hold every node of the cluster.
        let passing: std::collections::HashSet<&str> = passing.iter().copied().collect();
        let keep = |name: &str| passing.contains(name);
        match candidates {
            Candidates::Names(names) => ExtenderFilterResult {
                node_names: Some(names.iter().filter(|name| keep(name)).cloned().collect()),
                ..ExtenderFilterResult::default()
            },
            Candidates::Nodes(nodes) => {
                let items: Vec<Value> = nodes
                    .iter()
                    .filter(|(name, _)| keep(name))
                    .map(|(_, node)| node.clone())
                    .collect();
                ExtenderFilterResult {
                    nodes: Some(serde_json::json!({"metadata": {}, "items": items})),
                    ..ExtenderFilterResult::default()
                }
            }
            Candidates::Nothing => ExtenderFilterResult {
                node_names: Some(Vec::new()),
                ..ExtenderFilterResult::default()
            },
        }
    }
}

/// Decodes a filter request body the way kube-scheduler's Go side would accept it.
pub fn decode_filter_args(body: &[u8]) -> Result<ExtenderArgs> {
    let value: TopLevel = serde_json::from_slice(body).map_err(Error::NotJson)?;
    let fields = match value {
        TopLevel::Object(fields) => fields,
        TopLevel::Other(kind) => return Err(Error::NotAnObject(kind)),
    };
    let mut pod = None;
    let mut nodes = None;
    let mut node_names = None;
    // Go matches field names case-insensitively and the last duplicate wins; so does this.
    for (key, value) in fields {
        if key.eq_ignore_ascii_case("Pod") {
            pod = Some(value);
        } else if key.eq_ignore_ascii_case("Nodes") {
            nodes = Some(value);
        } else if key.eq_ignore_ascii_case("NodeNames") {
            node_names = Some(value);
        }
    }
    let pod = decode_pod(pod.ok_or(Error::NoPod)?)?;
    let candidates = match (decode_node_names(node_names)?, decode_nodes(nodes)?) {
        (Some(names), _) => Candidates::Names(names),
        (None, Some(nodes)) => Candidates::Nodes(nodes),
        (None, None) => Candidates::Nothing,
    };
    Ok(ExtenderArgs { pod, candidates })
}

fn decode_pod(value: Value) -> Result<Pod> {
    let Value::Object(mut pod) = value else {
        return match value {
            Value::Null => Err(Error::NoPod),
            other => Err(Error::BadPod(serde::de::Error::custom(format!(
                "expected an object, got {}",
                json_type(&other)
            )))),
        };
    };
    // Informer objects carry no type meta, and an empty or differently cased one must not fail the
    // Pod decoder, which insists on exactly "v1"/"Pod" when the fields are present.
    pod.retain(|key, _| !key.eq_ignore_ascii_case("apiVersion") && !key.eq_ignore_ascii_case("kind"));
    serde_json::from_value(Value::Object(pod)).map_err(Error::BadPod)
}

fn decode_node_names(value: Option<Value>) -> Result<Option<Vec<String>>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(name) => Ok(name),
                other => Err(Error::BadNodeNames(format!(
                    "element {index} is {}",
                    json_type(&other)
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(other) => Err(Error::BadNodeNames(format!("got {}", json_type(&other)))),
    }
}

fn decode_nodes(value: Option<Value>) -> Result<Option<Vec<(String, Value)>>> {
    let list = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(list)) => list,
        Some(other) => return Err(Error::BadNodes(format!("got {}", json_type(&other)))),
    };
    let items = field(&list, "items").cloned().unwrap_or(Value::Null);
    let items = match items {
        Value::Null => Vec::new(),
        Value::Array(items) => items,
        other => return Err(Error::BadNodes(format!("items is {}", json_type(&other)))),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, node)| {
            let name = node
                .as_object()
                .and_then(|node| field(node, "metadata"))
                .and_then(Value::as_object)
                .and_then(|metadata| field(metadata, "name"))
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .ok_or_else(|| Error::BadNodes(format!("items[{index}] has no metadata.name")))?;
            Ok((name.to_owned(), node))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A nested field: the exact name, else any spelling that differs only in case (Go's rule;
/// which of several such spellings wins is not worth preserving below the top level).
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// The body's top level, with an object's fields in document order (a JSON map would sort
/// them), so that the last of several spellings of a field wins, as in Go.
enum TopLevel {
    Object(Vec<(String, Value)>),
    /// Anything else, by its JSON type.
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TopLevel, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TopLevel;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry::<String, Value>()? {
                    fields.push(field);
                }
                Ok(TopLevel::Object(fields))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(TopLevel::Other("an array"))
            }

            fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("a boolean"))
            }

            fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("a number"))
            }

            fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("a number"))
            }

            fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("a number"))
            }

            fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("a string"))
            }

            fn visit_unit<E>(self) -> Result<TopLevel, E> {
                Ok(TopLevel::Other("null"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `ExtenderArgs` as Go's `json.Marshal` writes it, from kube-scheduler's
    /// `extender/v1/types_test.go` (TestCompatibility).
    const UPSTREAM_ARGS: &str = r#"{"Pod":{"metadata":{"name":"podname","creationTimestamp":null},"spec":{"containers":null},"status":{}},"Nodes":{"metadata":{},"items":[{"metadata":{"name":"nodename","creationTimestamp":null},"spec":{},"status":{"daemonEndpoints":{"kubeletEndpoint":{"Port":0}},"nodeInfo":{"machineID":"","systemUUID":"","bootID":"","kernelVersion":"","osImage":"","containerRuntimeVersion":"","kubeletVersion":"","kubeProxyVersion":"","operatingSystem":"","architecture":""}}}]},"NodeNames":["node1"]}"#;

    /// `ExtenderFilterResult` from the same test, written before `FailedAndUnresolvableNodes`
    /// existed.
    const UPSTREAM_RESULT: &str = r#"{"Nodes":{"metadata":{},"items":[{"metadata":{"name":"nodename","creationTimestamp":null},"spec":{},"status":{"daemonEndpoints":{"kubeletEndpoint":{"Port":0}},"nodeInfo":{"machineID":"","systemUUID":"","bootID":"","kernelVersion":"","osImage":"","containerRuntimeVersion":"","kubeletVersion":"","kubeProxyVersion":"","operatingSystem":"","architecture":""}}}]},"NodeNames":["node1"],"FailedNodes":{"foo":"bar"},"Error":"myerror"}"#;

    /// What kube-scheduler 1.36 sends with `nodeCacheCapable: true`: an informer Pod without
    /// type meta, `Nodes: null`.
    const NODE_CACHE_CAPABLE_ARGS: &str = r#"{"Pod":{"metadata":{"name":"web-7d4b9c-x2p","namespace":"shop","uid":"9f0c","ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d4b9c","uid":"rs-1","controller":true,"blockOwnerDeletion":true}],"annotations":{"LOCAL_REPLICAS":"1"}},"spec":{"containers":[{"name":"web","image":"nginx"}],"schedulerName":"tke-scheduler"},"status":{"phase":"Pending"}},"Nodes":null,"NodeNames":["idc-1","eklet-subnet-1"]}"#;

    fn pod_name(args: &ExtenderArgs) -> Option<&str> {
        args.pod.metadata.name.as_deref()
    }

    #[test]
    fn upstream_extender_args_decode_with_names_preferred_over_nodes() {
        let args = decode_filter_args(UPSTREAM_ARGS.as_bytes()).expect("upstream args decode");
        assert_eq!(pod_name(&args), Some("podname"));
        assert_eq!(args.candidates, Candidates::Names(vec!["node1".into()]));
    }

    #[test]
    fn upstream_extender_args_decode_when_lowercased_like_go_does() {
        let lowered = UPSTREAM_ARGS.to_lowercase();
        let args = decode_filter_args(lowered.as_bytes()).expect("lowercased args decode");
        assert_eq!(pod_name(&args), Some("podname"));
        assert_eq!(args.candidates.names(), vec!["node1"]);
    }

    #[test]
    fn node_objects_are_used_when_the_scheduler_sends_no_names() {
        let mut value: Value = serde_json::from_str(UPSTREAM_ARGS).expect("fixture is JSON");
        value["NodeNames"] = Value::Null;
        let args = decode_filter_args(value.to_string().as_bytes()).expect("args decode");
        assert_eq!(args.candidates.names(), vec!["nodename"]);
        let result = ExtenderFilterResult::passing(&args.candidates, &["nodename"]);
        let expected: Value = serde_json::from_str(UPSTREAM_ARGS).expect("fixture is JSON");
        assert_eq!(
            result.nodes.as_ref(),
            Some(&expected["Nodes"]),
            "the passing Node goes back unchanged"
        );
        assert_eq!(
            result.node_names, None,
            "a NodeList answer must not also carry names"
        );
    }

    #[test]
    fn what_kube_scheduler_sends_with_node_cache_capable_decodes() {
        let args = decode_filter_args(NODE_CACHE_CAPABLE_ARGS.as_bytes()).expect("args decode");
        assert_eq!(pod_name(&args), Some("web-7d4b9c-x2p"));
        assert_eq!(args.pod.metadata.uid.as_deref(), Some("9f0c"));
        assert_eq!(args.candidates.names(), vec!["idc-1", "eklet-subnet-1"]);
    }

    #[test]
    fn type_meta_on_the_pod_is_accepted_whatever_it_says() {
        for type_meta in [
            r#""apiVersion":"v1","kind":"Pod","#,
            r#""apiVersion":"","kind":"","#,
            r#""apiversion":"v1","kind":"pod","#,
        ] {
            let body = format!(r#"{{"Pod":{{{type_meta}"metadata":{{"name":"p"}}}},"NodeNames":[]}}"#);
            let args = decode_filter_args(body.as_bytes()).unwrap_or_else(|e| panic!("{type_meta}: {e}"));
            assert_eq!(pod_name(&args), Some("p"));
        }
    }

    #[test]
    fn the_filter_result_uses_the_upstream_field_names() {
        let result: ExtenderFilterResult =
            serde_json::from_str(UPSTREAM_RESULT).expect("upstream result decodes");
        assert_eq!(result.node_names, Some(vec!["node1".to_owned()]));
        assert_eq!(result.failed_nodes.get("foo").map(String::as_str), Some("bar"));
        assert_eq!(result.error, "myerror");
        let written: Value = serde_json::to_value(&result).expect("result encodes");
        let mut upstream: Value = serde_json::from_str(UPSTREAM_RESULT).expect("fixture is JSON");
        upstream["FailedAndUnresolvableNodes"] = serde_json::json!({});
        assert_eq!(written, upstream);
    }

    #[test]
    fn an_answer_by_name_is_exactly_what_go_expects() {
        let candidates = Candidates::Names(vec!["idc-1".into(), "eklet-subnet-1".into()]);
        let mut result = ExtenderFilterResult::passing(&candidates, &["eklet-subnet-1"]);
        result
            .failed_and_unresolvable_nodes
            .insert("idc-1".into(), "kept for the cloud".into());
        assert_eq!(
            serde_json::to_string(&result).expect("result encodes"),
            r#"{"Nodes":null,"NodeNames":["eklet-subnet-1"],"FailedNodes":{},"FailedAndUnresolvableNodes":{"idc-1":"kept for the cloud"},"Error":""}"#
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_what_was_wrong() {
        let cases = [
            ("", "not JSON"),
            ("[1]", "is an array, not a JSON object"),
            ("\"x\"", "is a string, not a JSON object"),
            ("null", "is null, not a JSON object"),
            ("{}", "no Pod"),
            (r#"{"Pod":null}"#, "no Pod"),
            (r#"{"Pod":7}"#, "not a valid Pod"),
            (r#"{"Pod":{"metadata":{"name":5}}}"#, "not a valid Pod"),
            (r#"{"Pod":{},"NodeNames":"idc-1"}"#, "NodeNames must be"),
            (r#"{"Pod":{},"NodeNames":["idc-1",2]}"#, "element 1 is a number"),
            (
                r#"{"Pod":{},"Nodes":{"items":[{"metadata":{}}]}}"#,
                "items[0] has no metadata.name",
            ),
            (r#"{"Pod":{},"Nodes":[]}"#, "Nodes must be"),
        ];
        for (body, expected) in cases {
            let error = decode_filter_args(body.as_bytes()).expect_err(body).to_string();
            assert!(
                error.contains(expected),
                "{body}: {error:?} does not mention {expected:?}"
            );
        }
    }

    #[test]
    fn the_last_of_duplicate_fields_wins_as_in_go() {
        let args = decode_filter_args(br#"{"NodeNames":["a"],"nodenames":["b"],"Pod":{}}"#).expect("decodes");
        assert_eq!(args.candidates.names(), vec!["b"]);
        let args = decode_filter_args(br#"{"nodenames":["b"],"NodeNames":["a"],"Pod":{}}"#).expect("decodes");
        assert_eq!(args.candidates.names(), vec!["a"]);
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-zA-Z0-9 ._-]{0,12}".prop_map(Value::String),
        ];
        let key = prop_oneof![
            Just("Pod".to_owned()),
            Just("pod".to_owned()),
            Just("NodeNames".to_owned()),
            Just("Nodes".to_owned()),
            Just("metadata".to_owned()),
            Just("name".to_owned()),
            Just("items".to_owned()),
            Just("spec".to_owned()),
            Just("containers".to_owned()),
            Just("apiVersion".to_owned()),
            "[a-zA-Z]{1,8}",
        ];
        leaf.prop_recursive(5, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_filter_args(&body);
        }

        #[test]
        fn arbitrary_json_never_panics_the_decoder(value in arbitrary_json()) {
            let _ = decode_filter_args(value.to_string().as_bytes());
        }

        #[test]
        fn any_names_the_scheduler_sends_come_back_as_a_subset(
            names in prop::collection::vec("[a-z0-9-]{1,10}", 0..8),
            keep in prop::collection::vec(any::<bool>(), 8),
        ) {
            let body = serde_json::json!({"Pod": {"metadata": {"name": "p"}}, "Nodes": null, "NodeNames": names});
            let args = decode_filter_args(body.to_string().as_bytes()).expect("valid args decode");
            let passing: Vec<&str> = args.candidates.names().into_iter().zip(&keep).filter(|(_, k)| **k).map(|(n, _)| n).collect();
            let result = ExtenderFilterResult::passing(&args.candidates, &passing);
            let returned = result.node_names.expect("names in, names out");
            prop_assert!(returned.iter().all(|name| names.contains(name)));
        }
    }
}
