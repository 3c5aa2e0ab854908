//! The contract between the real `tke_tencent` client and cloudsim, over loopback HTTP: every action,
//! the signature checks, retries and their limits, batching and paging, and fault classification.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tke_cloudsim::{Config, FailNext, Faults, Handle};
use tke_tencent::model::*;
use tke_tencent::retry::RetryPolicy;
use tke_tencent::sign::{ApiRequest, sign_request};
use tke_tencent::{Client, ClientConfig, Credentials, ErrorKind};

/// A manual clock, no rate limit and a ten-second start delay: every answer is predictable.
fn config() -> Config {
    Config {
        start_delay: Duration::from_secs(10),
        rate_limit_per_second: 0,
        manual_clock: true,
        seed: Some(42),
        ..Config::new(credentials())
    }
}

fn client_with(handle: &Handle, credentials: Credentials, retry: RetryPolicy) -> Client {
    Client::new(ClientConfig {
        retry,
        ..client_config(handle, credentials)
    })
    .unwrap()
}

/// Retries that take milliseconds, so the tests wait on conditions, not on backoff.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

fn client(handle: &Handle) -> Client {
    client_with(handle, credentials(), quick_retries())
}

fn pod(name: &str, subnet: &str) -> CreateEksContainerInstancesRequest {
    CreateEksContainerInstancesRequest {
        subnet_id: subnet.into(),
        ..request(name, vec![container("web", &[])])
    }
}

fn replicas(name: &str, count: i64) -> CreateEksContainerInstancesRequest {
    CreateEksContainerInstancesRequest {
        replicas: Some(count),
        ..pod(name, SUBNET)
    }
}

/// Sends a request signed with `timestamp`, bypassing the client, and returns `Response`.
async fn raw(handle: &Handle, action: &str, body: &str, timestamp: i64) -> Value {
    let host = handle.local_addr().to_string();
    let headers = sign_request(
        &credentials(),
        &ApiRequest {
            service: SERVICE,
            host: &host,
            action,
            version: VERSION,
            region: Some("ap-guangzhou"),
            timestamp,
            content_type: "application/json",
            payload: body.as_bytes(),
        },
    )
    .unwrap();
    let response = reqwest::Client::new()
        .post(handle.endpoint())
        .headers(headers)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "API errors come with HTTP 200");
    response.json::<Value>().await.unwrap()["Response"].clone()
}

fn error_code(response: &Value) -> &str {
    response["Error"]["Code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn every_action_works_through_the_real_client() {
    let sim = serve_on_loopback(config()).await;
    let client = client(&sim);

    let ids = client
        .create_instances(&pod("contract-pod", SUBNET))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let id = ids[0].clone();
    assert!(id.starts_with("eksci-"), "{id}");

    let pending = client.describe_instances_by_id(&ids).await.unwrap();
    assert_eq!(pending[0].status, InstanceStatus::Pending);
    assert_eq!(pending[0].eks_ci_name, "contract-pod");
    assert!(
        client
            .describe_log(&DescribeEksContainerInstanceLogRequest {
                eks_ci_id: id.clone(),
                ..Default::default()
            })
            .await
            .is_err()
    );

    sim.advance_clock(Duration::from_secs(10));
    let running = client.describe_instances_by_id(&ids).await.unwrap();
    assert_eq!(running[0].status, InstanceStatus::Running);
    assert_eq!(running[0].private_ip, "10.1.0.1");
    let state = running[0].containers[0].current_state.clone().unwrap();
    assert_eq!(state.state, ContainerStateName::Running);
    assert!(
        tke_tencent::time::parse_api_time(&state.start_time).is_some(),
        "{}",
        state.start_time
    );

    let by_name = client
        .list_instances(vec![Filter::new(filter_names::EKS_CI_NAME, ["contract-pod"])])
        .await
        .unwrap();
    assert_eq!(
        by_name.iter().map(|i| i.eks_ci_id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );

    let events = client.describe_events(&id, None).await.unwrap();
    let reasons: BTreeSet<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    for reason in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(reasons.contains(reason), "{reason} missing from {reasons:?}");
    }
    assert_eq!(events[0].reason, "Started", "newest first");

    sim.advance_clock(Duration::from_secs(5));
    let log = client
        .describe_log(&DescribeEksContainerInstanceLogRequest {
            eks_ci_id: id.clone(),
            tail: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(log.container_name, "web");
    let lines: Vec<&str> = log
        .log_content
        .lines()
        .map(|line| line.split_once(' ').map_or(line, |(_, text)| text))
        .collect();
    assert_eq!(
        lines,
        (0..=5).map(|i| format!("web log line {i}")).collect::<Vec<_>>()
    );

    client.delete_instances(&ids).await.unwrap();
    assert!(client.describe_instances_by_id(&ids).await.unwrap().is_empty());
    let stats = sim.stats();
    assert_eq!((stats.creates, stats.deletes, stats.live_instances), (1, 1, 0));
}

#[tokio::test]
async fn logs_grow_as_the_container_runs() {
    let sim = serve_on_loopback(Config {
        start_delay: Duration::ZERO,
        ..config()
    })
    .await;
    let client = client(&sim);
    let id = client
        .create_instances(&pod("grower", SUBNET))
        .await
        .unwrap()
        .remove(0);
    let request = DescribeEksContainerInstanceLogRequest {
        eks_ci_id: id,
        ..Default::default()
    };
    let first = client.describe_log(&request).await.unwrap().log_content;
    sim.advance_clock(Duration::from_secs(3));
    let later = client.describe_log(&request).await.unwrap().log_content;
    assert_eq!(first.lines().count(), 1);
    assert_eq!(later.lines().count(), 4);
    assert!(later.starts_with(&first), "earlier lines stay as they were");
}

#[tokio::test]
async fn a_wrong_secret_key_is_refused_with_signature_failure_and_not_retried() {
    let sim = serve_on_loopback(config()).await;
    let impostor = client_with(
        &sim,
        Credentials::new(credentials().secret_id, "not-the-key"),
        quick_retries(),
    );
    let err = impostor
        .describe_instances(&DescribeEksContainerInstancesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "AuthFailure.SignatureFailure");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert_eq!(sim.stats().requests_for("DescribeEKSContainerInstances"), 1);
}

#[tokio::test]
async fn an_unknown_secret_id_is_refused_with_secret_id_not_found() {
    let sim = serve_on_loopback(config()).await;
    let stranger = client_with(&sim, Credentials::new("AKIDnobody", "whatever"), quick_retries());
    let err = stranger
        .describe_instances(&DescribeEksContainerInstancesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "AuthFailure.SecretIdNotFound");
}

#[tokio::test]
async fn a_session_token_must_match_the_configured_one() {
    let with_token = credentials().with_token("sts-token-1");
    let sim = serve_on_loopback(Config {
        credentials: vec![with_token.clone()],
        ..config()
    })
    .await;
    let request = DescribeEksContainerInstancesRequest::default();
    client_with(&sim, with_token, quick_retries())
        .describe_instances(&request)
        .await
        .unwrap();
    let err = client(&sim).describe_instances(&request).await.unwrap_err();
    assert_eq!(err.code(), "AuthFailure.TokenFailure");
}

#[tokio::test]
async fn a_timestamp_more_than_five_minutes_off_is_refused_with_signature_expire() {
    let sim = serve_on_loopback(config()).await;
    let stale = raw(&sim, "DescribeEKSContainerInstances", "{}", unix_now() - 301).await;
    assert_eq!(error_code(&stale), "AuthFailure.SignatureExpire");
    let fresh = raw(&sim, "DescribeEKSContainerInstances", "{}", unix_now() - 10).await;
    assert_eq!(fresh["TotalCount"], 0, "{fresh}");
    assert!(fresh["RequestId"].as_str().is_some_and(|id| id.len() == 36));
}

#[tokio::test]
async fn unknown_actions_and_malformed_bodies_get_api_errors() {
    let sim = serve_on_loopback(config()).await;
    let unknown = raw(&sim, "DescribeEverything", "{}", unix_now()).await;
    assert_eq!(error_code(&unknown), "InvalidAction");
    let malformed = raw(&sim, "DescribeEKSContainerInstances", "{\"Limit\": ", unix_now()).await;
    assert_eq!(error_code(&malformed), "InvalidParameter");
    assert!(
        malformed["Error"]["Message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    let wrong_type = raw(
        &sim,
        "DeleteEKSContainerInstances",
        r#"{"EksCiIds": "eksci-1"}"#,
        unix_now(),
    )
    .await;
    assert_eq!(error_code(&wrong_type), "InvalidParameter");
    let missing = raw(&sim, "CreateEKSContainerInstances", "{}", unix_now()).await;
    assert_eq!(error_code(&missing), "MissingParameter");
    // Still serving after all of that.
    let fine = raw(&sim, "DescribeEKSContainerInstances", "{}", unix_now()).await;
    assert_eq!(error_code(&fine), "<none>");
}

fn fail_next(action: &str, code: &str, count: u32) -> Faults {
    Faults {
        fail_next: vec![FailNext {
            action: action.into(),
            code: code.into(),
            message: None,
            count,
        }],
        ..Faults::default()
    }
}

#[tokio::test]
async fn injected_throttling_is_retried_until_the_call_succeeds() {
    let sim = serve_on_loopback(config()).await;
    sim.set_faults(fail_next(
        "DescribeEKSContainerInstances",
        "RequestLimitExceeded",
        2,
    ))
    .unwrap();
    let response = client(&sim)
        .describe_instances(&DescribeEksContainerInstancesRequest::default())
        .await
        .unwrap();
    assert_eq!(response.total_count, 0);
    let stats = sim.stats();
    assert_eq!(stats.requests_for("DescribeEKSContainerInstances"), 3);
    assert_eq!(stats.errors_for("RequestLimitExceeded"), 2);
}

#[tokio::test]
async fn retries_stop_at_the_attempt_limit_with_the_last_error() {
    let sim = serve_on_loopback(config()).await;
    sim.set_faults(fail_next("DescribeEKSContainerInstances", "InternalError", 10))
        .unwrap();
    let err = client(&sim)
        .describe_instances(&DescribeEksContainerInstancesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InternalError");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(sim.stats().requests_for("DescribeEKSContainerInstances"), 4);
}

#[tokio::test]
async fn a_create_is_retried_after_throttling_but_never_after_an_internal_error() {
    let sim = serve_on_loopback(config()).await;
    let client = client(&sim);
    sim.set_faults(fail_next(
        "CreateEKSContainerInstances",
        "RequestLimitExceeded",
        1,
    ))
    .unwrap();
    client
        .create_instances(&pod("throttled-once", SUBNET))
        .await
        .unwrap();
    assert_eq!(sim.stats().requests_for("CreateEKSContainerInstances"), 2);

    sim.set_faults(fail_next("CreateEKSContainerInstances", "InternalError", 1))
        .unwrap();
    let err = client
        .create_instances(&pod("maybe-created", SUBNET))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InternalError");
    assert!(
        err.is_transient(),
        "the caller may try again after looking the instance up"
    );
    assert_eq!(sim.stats().requests_for("CreateEKSContainerInstances"), 3);
    assert_eq!(sim.stats().duplicate_names, 0);
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let sim = serve_on_loopback(Config {
        quotas: [(SUBNET.to_string(), 1)].into(),
        ..config()
    })
    .await;
    let client = client(&sim);
    let odd = CreateEksContainerInstancesRequest {
        cpu: 3.0,
        memory: 5.0,
        ..pod("odd", SUBNET)
    };
    let err = client.create_instances(&odd).await.unwrap_err();
    assert_eq!(
        (err.code(), err.kind()),
        ("InvalidParameterValue", ErrorKind::Permanent)
    );
    assert!(
        err.message().contains("not a supported specification"),
        "{}",
        err.message()
    );
    client.create_instances(&pod("first", SUBNET)).await.unwrap();
    let err = client.create_instances(&pod("second", SUBNET)).await.unwrap_err();
    assert_eq!((err.code(), err.kind()), ("LimitExceeded", ErrorKind::Permanent));
    assert_eq!(
        sim.stats().requests_for("CreateEKSContainerInstances"),
        3,
        "one request per create"
    );
}

#[tokio::test]
async fn a_sold_out_subnet_is_classified_as_sold_out_for_that_subnet() {
    let sim = serve_on_loopback(config()).await;
    sim.set_faults(Faults {
        sold_out_subnets: ["subnet-empty-zone".to_string()].into(),
        ..Faults::default()
    })
    .unwrap();
    let client = client(&sim);
    let err = client
        .create_instances(&pod("p", "subnet-empty-zone"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ResourcesSoldOut");
    assert_eq!(
        err.kind(),
        ErrorKind::SoldOut {
            subnet_id: Some("subnet-empty-zone".into())
        }
    );
    assert_eq!(
        sim.stats().requests_for("CreateEKSContainerInstances"),
        1,
        "sold out is not retried in place"
    );
    client.create_instances(&pod("p", SUBNET)).await.unwrap();
}

#[tokio::test]
async fn deleting_45_instances_takes_three_calls() {
    let sim = serve_on_loopback(config()).await;
    let client = client(&sim);
    let ids = client.create_instances(&replicas("batch", 45)).await.unwrap();
    assert_eq!(ids.len(), 45);
    client.delete_instances(&ids).await.unwrap();
    let stats = sim.stats();
    assert_eq!(stats.requests_for("DeleteEKSContainerInstances"), 3);
    assert_eq!((stats.deletes, stats.live_instances), (45, 0));
}

#[tokio::test]
async fn listing_and_describing_by_id_page_through_every_instance() {
    let sim = serve_on_loopback(config()).await;
    let client = client(&sim);
    let mut ids = Vec::new();
    for (name, count) in [("a", 100), ("b", 100), ("c", 50)] {
        ids.extend(client.create_instances(&replicas(name, count)).await.unwrap());
    }
    client
        .create_instances(&CreateEksContainerInstancesRequest {
            vpc_id: "vpc-other".into(),
            ..pod("x", SUBNET)
        })
        .await
        .unwrap();

    let listed = client
        .list_instances(vec![Filter::new(filter_names::VPC_ID, [VPC])])
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|i| i.eks_ci_id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(sim.stats().requests_for("DescribeEKSContainerInstances"), 3);

    let described = client.describe_instances_by_id(&ids).await.unwrap();
    assert_eq!(described.len(), 250);
    assert_eq!(sim.stats().requests_for("DescribeEKSContainerInstances"), 6);
    let pending = client
        .list_instances(vec![Filter::new(filter_names::STATUS, ["Pending"])])
        .await
        .unwrap();
    assert_eq!(pending.len(), 251);
    sim.advance_clock(Duration::from_secs(10));
    let pending = client
        .list_instances(vec![Filter::new(filter_names::STATUS, ["Pending"])])
        .await
        .unwrap();
    assert!(pending.is_empty());
}

#[tokio::test]
async fn the_server_rate_limit_answers_request_limit_exceeded() {
    let sim = serve_on_loopback(Config {
        rate_limit_per_second: 2,
        ..config()
    })
    .await;
    let client = client_with(&sim, credentials(), RetryPolicy::none());
    let request = DescribeEksContainerInstancesRequest::default();
    client.describe_instances(&request).await.unwrap();
    client.describe_instances(&request).await.unwrap();
    let err = client.describe_instances(&request).await.unwrap_err();
    assert_eq!(err.code(), "RequestLimitExceeded");
    assert!(err.is_transient());
    // Another action has its own budget; the limited one recovers as the (manual) clock moves.
    let other_action = client.describe_events("eksci-none", None).await.unwrap_err();
    assert_eq!(other_action.code(), "ResourceNotFound");
    sim.advance_clock(Duration::from_millis(500));
    client.describe_instances(&request).await.unwrap();
}

#[tokio::test]
async fn a_crashed_container_restarts_and_its_previous_logs_stay_readable() {
    let sim = serve_on_loopback(Config {
        start_delay: Duration::ZERO,
        restart_delay: Duration::from_secs(2),
        ..config()
    })
    .await;
    let client = client(&sim);
    let id = client
        .create_instances(&pod("crashy", SUBNET))
        .await
        .unwrap()
        .remove(0);
    sim.advance_clock(Duration::from_secs(3));

    let crashed = admin_post(
        &sim,
        "/admin/crash",
        &serde_json::json!({"eks_ci_id": id, "exit_code": 137}),
    )
    .await;
    assert_eq!(crashed.status(), 200);
    let exited = state(&client, &id).await;
    assert_eq!(
        (exited.state, exited.exit_code, exited.reason.as_str()),
        (ContainerStateName::Exited, 137, "Error")
    );

    sim.advance_clock(Duration::from_secs(2));
    let restarted = state(&client, &id).await;
    assert_eq!(
        (restarted.state, restarted.restart_count),
        (ContainerStateName::Running, 1)
    );
    let previous = client
        .describe_log(&DescribeEksContainerInstanceLogRequest {
            eks_ci_id: id.clone(),
            previous: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        previous.log_content.lines().count(),
        4,
        "lines 0-3 of the crashed run"
    );

    let missing = admin_post(
        &sim,
        "/admin/crash",
        &serde_json::json!({"eks_ci_id": "eksci-nothere"}),
    )
    .await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_second_create_with_a_live_name_is_counted_as_a_duplicate() {
    let sim = serve_on_loopback(config()).await;
    let client = client(&sim);
    let first = client.create_instances(&pod("pod-uid-1", SUBNET)).await.unwrap();
    client.create_instances(&pod("pod-uid-1", SUBNET)).await.unwrap();
    assert_eq!(sim.stats().duplicate_names, 1);
    client.delete_instances(&first).await.unwrap();
    client.create_instances(&pod("pod-uid-2", SUBNET)).await.unwrap();
    assert_eq!(sim.stats().duplicate_names, 1);
}

#[tokio::test]
async fn faults_and_stats_are_reachable_over_http() {
    let sim = serve_on_loopback(config()).await;
    let admin = reqwest::Client::new();
    let set = admin
        .post(format!("{}/admin/faults", sim.endpoint()))
        .body(
            r#"{"sold_out_subnets":["subnet-x"],"error_rates":{"*":{"throttle":0.0,"internal_error":0.0}}}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    assert!(sim.faults().sold_out_subnets.contains("subnet-x"));
    let bad = admin
        .post(format!("{}/admin/faults", sim.endpoint()))
        .body(r#"{"latency":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    client(&sim).create_instances(&pod("p", SUBNET)).await.unwrap();
    let stats: Value = admin
        .get(format!("{}/admin/stats", sim.endpoint()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["creates"], 1);
    assert_eq!(stats["live_instances"], 1);
    assert_eq!(stats["requests"]["CreateEKSContainerInstances"], 1);
}

/// Not a test: prints how many instances per second DescribeEKSContainerInstances returns over
/// loopback with 1000 live instances in batches of 100 ids. Run with
/// `cargo test -p tke-cloudsim --release --test contract -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn describe_throughput_with_1000_live_instances() {
    let sim = serve_on_loopback(Config {
        start_delay: Duration::ZERO,
        ..config()
    })
    .await;
    let client = client(&sim);
    let mut ids = Vec::new();
    for batch in 0..10 {
        ids.extend(
            client
                .create_instances(&replicas(&format!("bench-{batch}"), 100))
                .await
                .unwrap(),
        );
    }
    let batches: Vec<Vec<String>> = ids.chunks(100).map(<[String]>::to_vec).collect();
    for concurrency in [1usize, 4, 16] {
        let rounds = 20;
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..concurrency {
            let (client, batches) = (client.clone(), batches.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = 0usize;
                for round in 0..rounds {
                    let batch = &batches[(worker + round) % batches.len()];
                    seen += client.describe_instances_by_id(batch).await.unwrap().len();
                }
                seen
            }));
        }
        let mut seen = 0;
        for task in tasks {
            seen += task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "concurrency {concurrency:>2}: {seen} instances in {} calls, {elapsed:.2}s, {:.0} instances/s",
            concurrency * rounds,
            seen as f64 / elapsed
        );
        assert_eq!(seen, concurrency * rounds * 100);
    }
}
