//! The official request and response examples of every EKSCI action (fixtures/, verbatim from the API
//! documentation) against the wire types.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tke_tencent::model::*;
use tke_tencent::time::parse_api_time;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Parses a documented request and serializes it back: the JSON must be the documented one, so every
/// field name and value survives.
fn assert_request_round_trips<T: Serialize + DeserializeOwned>(name: &str) -> T {
    let documented: Value = serde_json::from_str(&fixture(name)).unwrap();
    let typed: T = serde_json::from_value(documented.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), documented, "{name}");
    typed
}

/// Every non-empty field of the documented response is modelled: it is still there after a round trip.
fn assert_fields_covered(documented: &Value, modelled: &Value, path: &str) {
    match (documented, modelled) {
        (Value::Object(doc), Value::Object(ours)) => {
            for (key, value) in doc {
                let empty = value.is_null()
                    || value.as_array().is_some_and(Vec::is_empty)
                    || value.as_str().is_some_and(str::is_empty)
                    || value.as_object().is_some_and(|o| o.values().all(Value::is_null));
                if empty {
                    continue;
                }
                let ours = ours
                    .get(key)
                    .unwrap_or_else(|| panic!("{path}.{key} is not modelled"));
                assert_fields_covered(value, ours, &format!("{path}.{key}"));
            }
        }
        (Value::Array(doc), Value::Array(ours)) => {
            assert_eq!(doc.len(), ours.len(), "{path}");
            for (index, (d, o)) in doc.iter().zip(ours).enumerate() {
                assert_fields_covered(d, o, &format!("{path}[{index}]"));
            }
        }
        (Value::Number(doc), Value::Number(ours)) => assert_eq!(doc.as_f64(), ours.as_f64(), "{path}"),
        (doc, ours) => assert_eq!(doc, ours, "{path}"),
    }
}

fn parse_response<T: Serialize + DeserializeOwned>(name: &str) -> T {
    let documented: Value = serde_json::from_str(&fixture(name)).unwrap();
    let envelope: Envelope<T> = serde_json::from_value(documented.clone()).unwrap();
    assert_fields_covered(&documented, &serde_json::to_value(&envelope).unwrap(), "");
    envelope.response
}

#[test]
fn the_documented_create_request_round_trips_with_every_field() {
    let request: CreateEksContainerInstancesRequest = assert_request_round_trips("create.request.json");
    assert_eq!(request.eks_ci_name, "for-imc-je2ytppo");
    assert_eq!((request.cpu, request.memory), (1.0, 2.0));
    assert_eq!(request.restart_policy, Some(RestartPolicy::Always));
    assert_eq!(
        request.containers[0].environment_vars[0].name,
        "EKS_LOGS_OUTPUT_TYPE"
    );
    assert_eq!(
        request
            .eks_ci_volume
            .as_ref()
            .map(|v| v.nfs_volumes[0].server.as_str()),
        Some("9.19.101.170")
    );
}

#[test]
fn a_create_request_built_in_code_uses_the_documented_field_names() {
    let request = CreateEksContainerInstancesRequest {
        containers: vec![Container {
            image: "nginx:1.27".into(),
            name: "web".into(),
            ..Default::default()
        }],
        eks_ci_name: "tke-cls-1-pod".into(),
        security_group_ids: vec!["sg-1".into()],
        subnet_id: "subnet-1".into(),
        vpc_id: "vpc-1".into(),
        memory: 0.5,
        cpu: 0.25,
        restart_policy: Some(RestartPolicy::OnFailure),
        cpu_type: Some("amd,intel".into()),
        ..Default::default()
    };
    let expected: Value = serde_json::from_str(
        r#"{"Containers":[{"Image":"nginx:1.27","Name":"web"}],"EksCiName":"tke-cls-1-pod",
            "SecurityGroupIds":["sg-1"],"SubnetId":"subnet-1","VpcId":"vpc-1","Memory":0.5,"Cpu":0.25,
            "RestartPolicy":"OnFailure","CpuType":"amd,intel"}"#,
    )
    .unwrap();
    assert_eq!(serde_json::to_value(&request).unwrap(), expected);
}

#[test]
fn a_describe_request_sends_filters_and_paging_under_their_documented_names() {
    let request = DescribeEksContainerInstancesRequest {
        limit: Some(100),
        offset: Some(200),
        filters: Some(vec![Filter::new(filter_names::VPC_ID, ["vpc-1"])]),
        eks_ci_ids: None,
    };
    assert_eq!(
        serde_json::to_string(&request).unwrap(),
        r#"{"Limit":100,"Offset":200,"Filters":[{"Name":"vpc-id","Values":["vpc-1"]}]}"#
    );
    let documented: DescribeEksContainerInstancesRequest =
        assert_request_round_trips("describe.request.json");
    assert_eq!(documented.eks_ci_ids, Some(vec!["eksci-6mr3o7eu".to_string()]));
}

#[test]
fn the_other_documented_requests_round_trip() {
    let delete: DeleteEksContainerInstancesRequest = assert_request_round_trips("delete.request.json");
    assert_eq!(delete.eks_ci_ids, ["eksci-6mr3o7eu"]);
    let events: DescribeEksContainerInstanceEventRequest =
        assert_request_round_trips("describe-event.request.json");
    assert_eq!(events.eks_ci_id, "eksci-iu09upos");
    let log: DescribeEksContainerInstanceLogRequest = assert_request_round_trips("describe-log.request.json");
    assert_eq!(
        (log.tail, log.previous, log.container_name.as_deref()),
        (Some(500), Some(false), Some("simple-cputest"))
    );
}

#[test]
fn the_documented_describe_response_parses_with_every_field() {
    let response: DescribeEksContainerInstancesResponse = parse_response("describe.response.json");
    assert_eq!(response.total_count, 1);
    assert_eq!(response.request_id, "34d9ea5a-6e9e-4384-88da-84229e133412");
    let instance = &response.eks_cis[0];
    assert_eq!(instance.eks_ci_id, "eksci-iu09upos");
    assert_eq!(instance.eks_ci_name, "未命名");
    assert_eq!(instance.status, InstanceStatus::Running);
    assert_eq!(instance.private_ip, "10.1.0.1");
    assert_eq!(instance.subnet_id, "subnet-1cghduvc");
    assert_eq!((instance.cpu, instance.memory), (1.0, 2.0));
    let container = &instance.containers[0];
    let state = container.current_state.as_ref().unwrap();
    assert_eq!(state.state, ContainerStateName::Running);
    assert_eq!(state.exit_code, 0);
    assert_eq!(
        parse_api_time(&state.finish_time),
        None,
        "the zero time means not finished"
    );
    assert_eq!(
        parse_api_time(&state.start_time).map(|t| t.as_second()),
        Some(1624505563)
    );
    assert!(container.volume_mounts.is_empty(), "null reads as empty");
    assert_eq!(container.gpu_limit, None);
    assert!(instance.init_containers.is_empty());
}

#[test]
fn the_documented_event_response_parses_newest_first() {
    let response: DescribeEksContainerInstanceEventResponse = parse_response("describe-event.response.json");
    let reasons: Vec<&str> = response.events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "Started",
            "Created",
            "Pulled",
            "Pulling",
            "NodeAllocatableEnforced"
        ]
    );
    assert_eq!(response.events[0].r#type, "Normal");
    assert_eq!(response.events[0].message, "Started container simple-cputest");
    let first = parse_api_time(&response.events[4].first_timestamp).unwrap();
    let last = parse_api_time(&response.events[0].last_timestamp).unwrap();
    assert!(first < last);
}

#[test]
fn the_documented_create_delete_and_log_responses_parse() {
    let create: CreateEksContainerInstancesResponse = parse_response("create.response.json");
    assert_eq!(create.eks_ci_ids, ["eksci-bd80pz8s"]);
    let delete: DeleteEksContainerInstancesResponse = parse_response("delete.response.json");
    assert_eq!(delete.request_id, "34d9ea5a-6e9e-4384-88da-84229e133457");
    let log: DescribeEksContainerInstanceLogResponse = parse_response("describe-log.response.json");
    assert_eq!(
        (log.container_name.as_str(), log.log_content.as_str()),
        ("simple-cputest", "hello world")
    );
}

#[test]
fn the_documented_error_envelope_parses_to_code_message_and_request_id() {
    let body = r#"{"Response": {"Error": {"Code": "AuthFailure.SignatureFailure",
        "Message": "The provided credentials could not be validated. Please ensure your signature is correct."},
        "RequestId": "ed93f3cb-f35e-473f-b9f3-0d451b8b79c6"}}"#;
    let envelope: Envelope<ErrorBody> = serde_json::from_str(body).unwrap();
    let error = envelope.response.error.unwrap();
    assert_eq!(error.code, "AuthFailure.SignatureFailure");
    assert!(error.message.starts_with("The provided credentials"));
    assert_eq!(
        envelope.response.request_id,
        "ed93f3cb-f35e-473f-b9f3-0d451b8b79c6"
    );
    let success: Envelope<ErrorBody> = serde_json::from_str(&fixture("delete.response.json")).unwrap();
    assert_eq!(success.response.error, None);
}

#[test]
fn unknown_statuses_are_kept_verbatim() {
    let instance: EksCi =
        serde_json::from_str(r#"{"EksCiId":"eksci-1","Status":"Updating","RestartPolicy":null}"#).unwrap();
    assert_eq!(instance.status, InstanceStatus::Other("Updating".into()));
    assert_eq!(instance.status.to_string(), "Updating");
    assert_eq!(instance.restart_policy, RestartPolicy::Always);
}

#[test]
fn debug_output_of_a_request_hides_env_values_and_registry_passwords() {
    let request = CreateEksContainerInstancesRequest {
        containers: vec![Container {
            environment_vars: vec![EnvironmentVariable {
                name: "DB_PASSWORD".into(),
                value: "hunter2-secret".into(),
            }],
            ..Default::default()
        }],
        image_registry_credentials: Some(vec![ImageRegistryCredential {
            username: Some("robot".into()),
            password: Some("registry-secret".into()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let shown = format!("{request:?}");
    assert!(
        shown.contains("DB_PASSWORD") && shown.contains("robot"),
        "{shown}"
    );
    assert!(
        !shown.contains("hunter2-secret") && !shown.contains("registry-secret"),
        "{shown}"
    );
    assert!(
        serde_json::to_string(&request)
            .unwrap()
            .contains("hunter2-secret"),
        "the wire still carries it"
    );
}
