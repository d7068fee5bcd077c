//! Bad requests over KServe V2 HTTP get the right status code and a JSON error that names
//! the problem; the server keeps serving; the binary tensor extension round-trips.

mod common;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use common::{Repository, Server, check_simple_response, simple_input0, simple_input1};

const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// One bad request and what the server must answer.
struct Case {
    what: &'static str,
    path: &'static str,
    /// `Inference-Header-Content-Length`, for binary bodies.
    header_length: Option<String>,
    body: Vec<u8>,
    status: u16,
    /// Words the error message must contain (case-insensitive).
    mentions: &'static [&'static str],
}

impl Case {
    fn json(
        what: &'static str,
        path: &'static str,
        body: Value,
        status: u16,
        mentions: &'static [&'static str],
    ) -> Case {
        Case {
            what,
            path,
            header_length: None,
            body: body.to_string().into_bytes(),
            status,
            mentions,
        }
    }

    fn binary(
        what: &'static str,
        header: Value,
        raw: &[u8],
        mentions: &'static [&'static str],
    ) -> Case {
        let (body, length) = binary_body(&header, raw);
        Case {
            what,
            path: "/v2/models/simple/infer",
            header_length: Some(length.to_string()),
            body,
            status: 400,
            mentions,
        }
    }

    /// Sends the request; `Err` describes how the answer differs from the expected one.
    async fn check(&self, server: &Server, client: &reqwest::Client) -> Result<()> {
        let mut request = client.post(server.url(self.path)).body(self.body.clone());
        if let Some(length) = &self.header_length {
            request = request.header(HEADER_LENGTH, length);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        ensure!(
            status == self.status,
            "status {status}, expected {}; body {text}",
            self.status
        );
        let body: Value = serde_json::from_str(&text).with_context(|| format!("body {text}"))?;
        let error = body["error"]
            .as_str()
            .with_context(|| format!("no \"error\" string in {text}"))?;
        let lower = error.to_lowercase();
        for word in self.mentions {
            ensure!(
                lower.contains(&word.to_lowercase()),
                "error {error:?} does not mention {word:?}"
            );
        }
        Ok(())
    }
}

/// A binary-extension body: the JSON header, then `raw`; and the header's length.
fn binary_body(header: &Value, raw: &[u8]) -> (Vec<u8>, usize) {
    let mut body = header.to_string().into_bytes();
    let length = body.len();
    body.extend_from_slice(raw);
    (body, length)
}

fn int32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn int32_values(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A `simple` request with these two inputs.
fn simple_with(input0: Value, input1: Value) -> Value {
    json!({"inputs": [input0, input1]})
}

fn int32_input(name: &str, batch: usize, values: Vec<i32>) -> Value {
    json!({"name": name, "datatype": "INT32", "shape": [batch, 16], "data": values})
}

/// An input whose data follows the JSON header as `size` raw bytes.
fn binary_input(name: &str, datatype: &str, shape: &[usize], size: usize) -> Value {
    json!({"name": name, "datatype": datatype, "shape": shape,
        "parameters": {"binary_data_size": size}})
}

/// Header of a `simple` request whose two inputs claim `size0` and `size1` binary bytes.
fn binary_header(size0: usize, size1: usize) -> Value {
    json!({"inputs": [
        binary_input("INPUT0", "INT32", &[1, 16], size0),
        binary_input("INPUT1", "INT32", &[1, 16], size1),
    ]})
}

fn bad_requests() -> Vec<Case> {
    let a = int32_input("INPUT0", 1, simple_input0(1));
    let b = int32_input("INPUT1", 1, simple_input1(1));
    let mut fp32 = a.clone();
    fp32["datatype"] = json!("FP32");
    let short = json!({"name": "INPUT0", "datatype": "INT32", "shape": [1, 8], "data": vec![1; 8]});
    let big_batch = simple_with(
        int32_input("INPUT0", 9, simple_input0(9)),
        int32_input("INPUT1", 9, simple_input1(9)),
    );
    let extra = json!({"inputs": [a, b,
        {"name": "INPUT2", "datatype": "INT32", "shape": [1, 16], "data": simple_input1(1)}]});
    let unknown_output = json!({"inputs": [a, b], "outputs": [{"name": "OUTPUT9"}]});
    let sixty_four = vec![0u8; 64];

    vec![
        Case::json(
            "unknown model",
            "/v2/models/no_such_model/infer",
            simple_with(a.clone(), b.clone()),
            404,
            &["no_such_model"],
        ),
        Case::json(
            "unknown version",
            "/v2/models/simple/versions/7/infer",
            simple_with(a.clone(), b.clone()),
            404,
            &["version", "7"],
        ),
        Case::json(
            "version the policy does not serve",
            "/v2/models/mlp_classifier/versions/1/infer",
            json!({"inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
            ]}),
            404,
            &["version", "1"],
        ),
        Case::json(
            "wrong datatype",
            "/v2/models/simple/infer",
            simple_with(fp32, b.clone()),
            400,
            &["INPUT0", "datatype", "FP32", "INT32"],
        ),
        Case::json(
            "wrong shape",
            "/v2/models/simple/infer",
            simple_with(short, b.clone()),
            400,
            &["INPUT0", "shape"],
        ),
        Case::json(
            "batch above max_batch_size",
            "/v2/models/simple/infer",
            big_batch,
            400,
            &["batch size 9", "8"],
        ),
        Case::json(
            "missing input",
            "/v2/models/simple/infer",
            json!({"inputs": [a.clone()]}),
            400,
            &["missing", "INPUT1"],
        ),
        Case::json(
            "unknown input",
            "/v2/models/simple/infer",
            extra,
            400,
            &["INPUT2"],
        ),
        Case::json(
            "unknown requested output",
            "/v2/models/simple/infer",
            unknown_output,
            400,
            &["output", "OUTPUT9"],
        ),
        Case::binary(
            "binary_data_size larger than the data sent",
            binary_header(64, 64),
            &sixty_four[..32].repeat(3),
            &["INPUT1", "binary_data_size"],
        ),
        Case::binary(
            "binary_data_size smaller than the data sent",
            binary_header(64, 64),
            &[sixty_four.clone(), sixty_four.clone(), vec![0; 8]].concat(),
            &["8 bytes", "binary_data_size"],
        ),
        Case {
            header_length: Some("100000".into()),
            ..Case::binary(
                "Inference-Header-Content-Length beyond the body",
                binary_header(64, 64),
                &sixty_four.repeat(2),
                &["Inference-Header-Content-Length", "100000"],
            )
        },
        Case {
            header_length: Some("sixty".into()),
            ..Case::binary(
                "Inference-Header-Content-Length not a number",
                binary_header(64, 64),
                &sixty_four.repeat(2),
                &["Inference-Header-Content-Length"],
            )
        },
        Case {
            what: "body not JSON",
            path: "/v2/models/simple/infer",
            header_length: None,
            body: b"INPUT0=1,2,3".to_vec(),
            status: 400,
            mentions: &["JSON"],
        },
        Case::json(
            "the same output requested twice",
            "/v2/models/simple/infer",
            json!({
                "inputs": simple_with(a.clone(), b.clone())["inputs"],
                "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]
            }),
            400,
            &["OUTPUT0", "more than once"],
        ),
        Case::json(
            "a shape whose element count overflows",
            "/v2/models/simple/infer",
            simple_with(
                json!({"name": "INPUT0", "datatype": "INT32", "shape": [i64::MAX, i64::MAX], "data": [1]}),
                b.clone(),
            ),
            400,
            &["INPUT0", "more elements than can be addressed"],
        ),
        Case::json(
            "request id over 256 bytes",
            "/v2/models/simple/infer",
            json!({"id": "i".repeat(257), "inputs": simple_with(a.clone(), b.clone())["inputs"]}),
            400,
            &["request id", "257", "256"],
        ),
        Case::binary(
            "request id over 256 bytes in a binary header",
            json!({"id": "i".repeat(300), "inputs": binary_header(64, 64)["inputs"]}),
            &sixty_four.repeat(2),
            &["request id", "300", "256"],
        ),
        Case::json(
            "data of the wrong JSON type",
            "/v2/models/simple/infer",
            simple_with(
                json!({"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": vec![vec![1.5; 16]]}),
                b.clone(),
            ),
            400,
            &["INPUT0", "element 0 is number 1.5", "INT32"],
        ),
        Case::json(
            "more data than the shape holds",
            "/v2/models/simple/infer",
            simple_with(
                json!({"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": vec![1; 17]}),
                b.clone(),
            ),
            400,
            &["INPUT0", "more than 16 elements", "[1, 16]"],
        ),
        Case::json(
            "data nested deeper than the shape",
            "/v2/models/simple/infer",
            simple_with(
                json!({"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": vec![vec![vec![1; 16]]]}),
                b.clone(),
            ),
            400,
            &["INPUT0", "nests arrays 3 deep"],
        ),
        Case::json(
            "model that failed to load",
            "/v2/models/broken/infer",
            simple_with(a, b),
            503,
            &["broken"],
        ),
    ]
}

#[tokio::test]
async fn bad_requests_are_answered_with_status_and_reason_then_serving_continues() -> Result<()> {
    let repository = Repository::examples()?;
    repository.add_corrupt_model("broken")?;
    let server = Server::start(repository, &[]).await?;
    let client = reqwest::Client::new();

    let mut failures = Vec::new();
    for case in bad_requests() {
        if let Err(e) = case.check(&server, &client).await {
            failures.push(format!("{}: {e:#}", case.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let (status, body) = server.get("/v2/models/simple/infer").await?;
    assert_eq!(status, 405, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("method not allowed")),
        "{body}"
    );

    let (status, _) = server.get("/v2/health/live").await?;
    assert_eq!(status, 200);
    for batch in [1, 8] {
        let (status, body) = server
            .post("/v2/models/simple/infer", &common::simple_request(batch))
            .await?;
        assert_eq!(status, 200, "{body}");
        check_simple_response(&body, batch)?;
    }
    Ok(())
}

#[tokio::test]
async fn body_over_max_request_bytes_is_refused() -> Result<()> {
    let server = Server::start(Repository::examples()?, &["--max-request-bytes", "4096"]).await?;
    let mut request = common::simple_request(1);
    request["id"] = json!("x".repeat(100_000));
    let (status, body) = server.post("/v2/models/simple/infer", &request).await?;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("4096") && error.contains("--max-request-bytes"),
        "error does not name the limit: {body}"
    );

    let (status, body) = server
        .post("/v2/models/simple/infer", &common::simple_request(1))
        .await?;
    assert_eq!(status, 200, "{body}");
    check_simple_response(&body, 1)
}

/// A `simple` request of one row, after `padding` bytes of leading JSON whitespace.
fn padded_simple_request(padding: usize) -> Vec<u8> {
    let mut body = vec![b' '; padding];
    body.extend(common::simple_request(1).to_string().into_bytes());
    body
}

#[tokio::test]
async fn requests_beyond_max_inflight_bytes_get_503_and_serving_continues() -> Result<()> {
    let server =
        Server::start(Repository::examples()?, &["--max-inflight-bytes", "100000"]).await?;
    let client = reqwest::Client::new();
    let url = server.url("/v2/models/simple/infer");
    let post = |body: Vec<u8>| client.post(&url).body(body).send();

    // One request larger than the whole budget (but under --max-request-bytes).
    let response = post(padded_simple_request(150_000)).await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("--max-inflight-bytes"), "{text}");

    // A request whose body is still arriving holds its bytes: 80 kB of it leaves no room
    // for a 30 kB request until it is answered. The first probe waits for the 80 kB to arrive
    // (sent at once, both raced, and the probe, smaller, usually won); when a probe is still
    // in flight as the 80 kB arrive all the same, the slow request is the one refused: then it
    // is sent again.
    let slow_body = padded_simple_request(80_000);
    let (first, rest) = slow_body.split_at(80_000);
    let mut attempts = 0;
    let (tx, slow) = loop {
        attempts += 1;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
        tx.send(Ok(first.to_vec())).await?;
        let slow = tokio::spawn(
            client
                .post(&url)
                .body(reqwest::Body::wrap_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .send(),
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let probe_refused = loop {
            if slow.is_finished() {
                break false;
            }
            if post(padded_simple_request(30_000)).await?.status() == 503 {
                break true;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "a 30 kB request refused while 80 kB are in flight: not after 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        if probe_refused {
            break (tx, slow);
        }
        let status = slow.await??.status();
        ensure!(status == 503, "the slow request ended early with {status}");
        ensure!(
            attempts < 5,
            "the 80 kB request was refused {attempts} times"
        );
    };
    tx.send(Ok(rest.to_vec())).await?;
    drop(tx);
    let (status, body) = common::json_reply(slow.await??).await?;
    assert_eq!(status, 200, "{body}");
    check_simple_response(&body, 1)?;

    let (status, body) = common::json_reply(post(padded_simple_request(30_000)).await?).await?;
    assert_eq!(status, 200, "{body}");
    check_simple_response(&body, 1)
}

/// Sends a binary-extension request; returns the response's JSON header and binary tail.
async fn binary_infer(
    server: &Server,
    model: &str,
    header: &Value,
    raw: &[u8],
) -> Result<(Value, Vec<u8>)> {
    let (body, length) = binary_body(header, raw);
    let response = reqwest::Client::new()
        .post(server.url(&format!("/v2/models/{model}/infer")))
        .header(HEADER_LENGTH, length.to_string())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let json_length: Option<usize> = response
        .headers()
        .get(HEADER_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = response.bytes().await?;
    ensure!(
        status == 200,
        "status {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let json_length = json_length.with_context(|| format!("no {HEADER_LENGTH} in the response"))?;
    ensure!(
        json_length <= bytes.len(),
        "{HEADER_LENGTH} {json_length} > body {}",
        bytes.len()
    );
    let header: Value = serde_json::from_slice(&bytes[..json_length])?;
    Ok((header, bytes[json_length..].to_vec()))
}

#[tokio::test]
async fn binary_tensor_data_round_trips() -> Result<()> {
    let server = Server::start(Repository::examples()?, &[]).await?;
    let a = simple_input0(2);
    let b: Vec<i32> = (0..32).map(|i| 100 - 3 * i).collect();
    let raw = [int32_bytes(&a), int32_bytes(&b)].concat();
    let inputs = json!([
        binary_input("INPUT0", "INT32", &[2, 16], 128),
        binary_input("INPUT1", "INT32", &[2, 16], 128),
    ]);
    let sum: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let diff: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();

    // Every output binary, asked for per output.
    let header = json!({"inputs": inputs, "outputs": [
        {"name": "OUTPUT1", "parameters": {"binary_data": true}},
        {"name": "OUTPUT0", "parameters": {"binary_data": true}},
    ]});
    let (reply, tail) = binary_infer(&server, "simple", &header, &raw).await?;
    let outputs = &reply["outputs"];
    assert_eq!(outputs[0]["name"], "OUTPUT1", "{reply}");
    assert_eq!(outputs[1]["name"], "OUTPUT0", "{reply}");
    for output in outputs.as_array().context("outputs")? {
        assert_eq!(output["parameters"]["binary_data_size"], 128, "{reply}");
        assert_eq!(output["shape"], json!([2, 16]), "{reply}");
        assert!(output.get("data").is_none(), "{reply}");
    }
    assert_eq!(tail.len(), 256);
    assert_eq!(int32_values(&tail[..128]), diff);
    assert_eq!(int32_values(&tail[128..]), sum);

    // binary_data_output for all, with one output overridden back to JSON.
    let header = json!({"inputs": inputs, "parameters": {"binary_data_output": true},
    "outputs": [
        {"name": "OUTPUT0"},
        {"name": "OUTPUT1", "parameters": {"binary_data": false}},
    ]});
    let (reply, tail) = binary_infer(&server, "simple", &header, &raw).await?;
    assert_eq!(
        reply["outputs"][0]["parameters"]["binary_data_size"], 128,
        "{reply}"
    );
    assert_eq!(reply["outputs"][1]["data"], json!(diff), "{reply}");
    assert_eq!(int32_values(&tail), sum);

    // FP16 has no JSON form worth the name: binary in, binary out (1.0 0.5 -1.0 2.0 … doubled).
    let halves: [u16; 8] = [
        0x3C00, 0x3800, 0xBC00, 0x4000, 0x0000, 0x3C00, 0x3800, 0xBC00,
    ];
    let doubled: [u16; 8] = [
        0x4000, 0x3C00, 0xC000, 0x4400, 0x0000, 0x4000, 0x3C00, 0xC000,
    ];
    let raw: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
    let header = json!({
        "inputs": [binary_input("INPUT0", "FP16", &[1, 8], 16)],
        "parameters": {"binary_data_output": true},
    });
    let (reply, tail) = binary_infer(&server, "fp16_scale", &header, &raw).await?;
    assert_eq!(reply["outputs"][0]["datatype"], "FP16", "{reply}");
    let got: Vec<u16> = tail
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(got, doubled);
    Ok(())
}
