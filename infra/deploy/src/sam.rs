//! AWS SAM: one template per region; each CPU function an `AWS::Serverless::Function`.
//!
//! | manifest | SAM |
//! |---|---|
//! | binary | `bootstrap` in `CodeUri: build/<function>/`, runtime `provided.al2023` |
//! | memory, timeout | `MemorySize` (MB, 128 to 10,240), `Timeout` (s, at most 900) |
//! | tmp | `EphemeralStorage.Size` (MB, 512 to 10,240) |
//! | max_containers | `ReservedConcurrentExecutions` |
//! | min_containers > 0 | `AutoPublishAlias: live` + `ProvisionedConcurrencyConfig` |
//! | url.auth none / token | `FunctionUrlConfig.AuthType` `NONE` / `AWS_IAM` (SigV4, not a bearer token) |
//! | retries, result_ttl | `EventInvokeConfig` `MaximumRetryAttempts` (at most 2), `MaximumEventAgeInSeconds` (60 to 21,600) |
//! | snapshot(s), env | `Environment.Variables`, snapshots under `/var/task/snapshots/<name>` |
//!
//! Tokens: Lambda function URLs know two auth types, `NONE` and `AWS_IAM`, and no bearer
//! token, so `url.auth = "token"` becomes `AWS_IAM` (callers sign their requests with
//! SigV4 as an IAM principal allowed `lambda:InvokeFunctionUrl`), with a warning, and no
//! thaw token is rendered. The control plane is AWS's own (IAM on the Lambda API).
//!
//! Not rendered: `cpu` (Lambda's CPU follows `MemorySize`), `pids`, and `network` (a
//! Lambda function outside a VPC can always open outbound connections, so `none` is not
//! enforced there). `volumes` cannot be rendered: each function with volumes gets a warning.
//! Function URLs keep AWS's default `InvokeMode`, `BUFFERED` (Lambda calls `Invoke`): a
//! reply the function streams (generate with `"stream": true`) arrives there whole, as
//! through thaw's own Invoke API; streaming it on AWS takes `RESPONSE_STREAM`, set by hand.

use serde_json::{json, Map, Value};
use thaw_manifest::{FunctionPlan, Plan, UrlAuth};

use crate::{
    json_text, pascal, snapshot_env, snapshot_names, stacks, volume_warnings, File, Rendered,
};

/// Renders one template per region.
pub fn render(plan: &Plan) -> Rendered {
    let mut out = Rendered::default();
    volume_warnings(
        plan.functions
            .values()
            .filter(|f| f.spec.gpu.kind.is_none()),
        &mut out.warnings,
    );
    for (region, functions) in stacks(plan) {
        let mut resources = Map::new();
        let mut outputs = Map::new();
        for f in functions {
            if let Some(kind) = &f.spec.gpu.kind {
                out.warnings.push(format!(
                    "{}: needs a {kind} GPU, which AWS Lambda does not offer; deploy it with --target knative",
                    f.name
                ));
                continue;
            }
            let id = format!("{}Function", pascal(f.name.as_str()));
            resources.insert(id.clone(), function(plan, f, &mut out.warnings));
            outputs.insert(
                format!("{}Url", pascal(f.name.as_str())),
                json!({
                    "Description": format!("Function URL of {}", f.name),
                    "Value": {"Fn::GetAtt": [format!("{id}Url"), "FunctionUrl"]}
                }),
            );
        }
        if resources.is_empty() {
            continue;
        }
        let template = json!({
            "AWSTemplateFormatVersion": "2010-09-09",
            "Transform": "AWS::Serverless-2016-10-31",
            "Description": format!("thaw app {} ({region}), rendered by thaw deploy render", plan.app),
            "Resources": resources,
            "Outputs": outputs,
        });
        out.files.push(File {
            path: format!("aws-sam/{region}/template.json").into(),
            text: json_text(&template),
        });
    }
    out
}

fn function(plan: &Plan, f: &FunctionPlan, warnings: &mut Vec<String>) -> Value {
    let spec = &f.spec;
    let mut env: Map<String, Value> = spec
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    for (role, name) in snapshot_names(f) {
        env.insert(
            snapshot_env(role.as_deref()),
            Value::String(format!("/var/task/snapshots/{name}")),
        );
    }
    let memory_mb = (spec.memory.0 / (1024 * 1024)).clamp(128, 10_240);
    let timeout = spec.timeout.0.as_secs().clamp(1, 900);
    if spec.timeout.0.as_secs() > 900 {
        warnings.push(format!("{}: timeout cut to Lambda's 900 s", f.name));
    }
    let tmp_mb = spec.tmp.mebibytes().clamp(512, 10_240);
    if tmp_mb != spec.tmp.mebibytes() {
        warnings.push(format!(
            "{}: tmp = {} MiB set to {tmp_mb} MiB, within Lambda's ephemeral storage of 512 to 10,240 MiB",
            f.name,
            spec.tmp.mebibytes()
        ));
    }
    if spec.url.auth == UrlAuth::Token {
        warnings.push(format!(
            "{}: url.auth = \"token\" becomes AuthType AWS_IAM: callers sign requests with SigV4, not THAW_URL_TOKEN",
            f.name
        ));
    }
    if spec.batch.is_some() {
        warnings.push(format!(
            "{}: batch is thaw serve's dynamic batching: AWS Lambda sends one event per invocation (deploy with --target knative or docker to keep it)",
            f.name
        ));
    }
    if spec.retries > 2 {
        warnings.push(format!(
            "{}: retries = {} cut to Lambda's maximum of 2 for async invocations",
            f.name, spec.retries
        ));
    }
    let mut props = json!({
        "FunctionName": format!("{}-{}", plan.app, f.name),
        "Description": format!("thaw function {}", f.name),
        "Runtime": "provided.al2023",
        "Handler": "bootstrap",
        "CodeUri": format!("build/{}/", f.name),
        "Architectures": ["x86_64"],
        "MemorySize": memory_mb,
        "Timeout": timeout,
        "EphemeralStorage": { "Size": tmp_mb },
        "ReservedConcurrentExecutions": spec.max_containers,
        "FunctionUrlConfig": {
            "AuthType": match spec.url.auth { UrlAuth::None => "NONE", UrlAuth::Token => "AWS_IAM" }
        },
        "EventInvokeConfig": {
            "MaximumRetryAttempts": spec.retries.min(2),
            "MaximumEventAgeInSeconds": spec.result_ttl.0.as_secs().clamp(60, 21_600),
        },
    });
    if !env.is_empty() {
        props["Environment"] = json!({ "Variables": env });
    }
    if spec.min_containers > 0 {
        props["AutoPublishAlias"] = json!("live");
        props["ProvisionedConcurrencyConfig"] =
            json!({ "ProvisionedConcurrentExecutions": spec.min_containers });
    }
    json!({ "Type": "AWS::Serverless::Function", "Properties": props })
}
