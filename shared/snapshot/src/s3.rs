//! Snapshots on S3 (or any S3-compatible store), moved with aws-sdk-s3.
//!
//! The bucket mirrors the local cache: `<prefix>/objects/<digest>/<file>` holds each
//! snapshot under the sha256 of its snapshot.json, and `<prefix>/names/<name>` holds the
//! digest a name points at. A push uploads the files, then snapshot.json, then the name,
//! so a reader never sees a name before its content.
//!
//! A pull:
//! 1. reads the name's digest, then snapshot.json, whose sha256 must equal the digest;
//! 2. fetches each file with parallel ranged GETs (8 MiB parts, 8 at a time) written at
//!    their offsets into a staging directory inside the cache; a part whose stream breaks
//!    resumes from the last byte it received, up to [`PART_ATTEMPTS`] times;
//! 3. verifies every file's size and sha256 (an error names the S3 object), and renames
//!    the staging directory into the cache. On any error the staging is removed, so
//!    nothing partial is ever left in the cache.
//!
//! Configuration follows the standard AWS chain (environment, profile, …) plus an
//! `endpoint_url` and `force_path_style` for S3-compatible stores.

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;

use crate::cache::{CacheEntry, SnapshotCache};
use crate::digest::sha256_bytes;
use crate::{SnapshotError, SnapshotMeta, META_FILE};

/// Size of one ranged GET.
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
/// Ranged GETs in flight per file.
pub const PARALLEL: usize = 8;
/// Attempts per part, each resuming where the last stopped.
pub const PART_ATTEMPTS: u32 = 3;

/// Where the store is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS when unset.
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub force_path_style: bool,
    /// The region; from the AWS chain when unset (`us-east-1` if it has none).
    pub region: Option<String>,
}

/// How a pull fetches each file.
#[derive(Debug, Clone, Copy)]
pub struct PullOptions {
    /// Ranged GETs in flight per file; 1 with `part_size` ≥ the file is one plain GET.
    pub parallel: usize,
    /// Bytes per ranged GET.
    pub part_size: u64,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            parallel: PARALLEL,
            part_size: PART_SIZE,
        }
    }
}

/// What a transfer moved.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The snapshot's name.
    pub name: String,
    /// sha256 of its snapshot.json.
    pub digest: String,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// A connected snapshot store.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

fn parse_url(url: &str) -> Result<(String, String), SnapshotError> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| SnapshotError::Store {
            url: url.to_owned(),
            reason: "a snapshot store is an s3://bucket/prefix URL".into(),
        })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(SnapshotError::Store {
            url: url.to_owned(),
            reason: "the URL names no bucket".into(),
        });
    }
    Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

impl S3Store {
    /// Builds a client from the AWS chain and `config`. Nothing is contacted yet.
    pub async fn connect(config: &S3Config) -> Result<Self, SnapshotError> {
        let (bucket, prefix) = parse_url(&config.url)?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        // The region: given, else the environment's, else us-east-1 (S3-compatible stores
        // ignore it). Never the instance metadata service, which is slow off EC2.
        let region = config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let region = Some(aws_config::Region::new(region));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .read_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(r) = region {
            loader = loader.region(r);
        }
        let shared = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            s3 = s3.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint_url {
            s3 = s3.endpoint_url(endpoint);
        }
        s3 = s3.force_path_style(config.force_path_style);
        Ok(Self {
            client: Client::from_conf(s3.build()),
            bucket,
            prefix,
        })
    }

    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// The `s3://` URL of a key, for messages.
    pub fn url_of(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(rel))
    }

    fn fail(&self, rel: &str, e: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Store {
            url: self.url_of(rel),
            reason: e.to_string(),
        }
    }

    async fn get_small(&self, rel: &str) -> Result<Bytes, SnapshotError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(rel))
            .send()
            .await
            .map_err(|e| self.fail(rel, error_chain(&e)))?;
        let body = out.body.collect().await.map_err(|e| self.fail(rel, e))?;
        Ok(body.into_bytes())
    }

    /// Uploads the verified snapshot at `dir`: files, then snapshot.json, then the name.
    pub async fn push(&self, dir: &Path) -> Result<Transfer, SnapshotError> {
        let started = Instant::now();
        let dir_owned = dir.to_owned();
        let meta = tokio::task::spawn_blocking(move || crate::verify(&dir_owned))
            .await
            .map_err(|e| SnapshotError::InvalidBuild(e.to_string()))??;
        let meta_path = dir.join(META_FILE);
        let meta_bytes = std::fs::read(&meta_path).map_err(|e| SnapshotError::io(&meta_path, e))?;
        let digest = sha256_bytes(&meta_bytes);
        let mut bytes = 0;
        for file in &meta.files {
            let rel = format!("objects/{digest}/{}", file.path);
            let path = dir.join(&file.path);
            let body = ByteStream::from_path(&path)
                .await
                .map_err(|e| self.fail(&rel, e))?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.key(&rel))
                .body(body)
                .send()
                .await
                .map_err(|e| self.fail(&rel, error_chain(&e)))?;
            bytes += file.bytes;
        }
        for (rel, body) in [
            (
                format!("objects/{digest}/{META_FILE}"),
                Bytes::from(meta_bytes),
            ),
            (
                format!("names/{}", meta.name),
                Bytes::from(format!("{digest}\n")),
            ),
        ] {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.key(&rel))
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| self.fail(&rel, error_chain(&e)))?;
        }
        Ok(Transfer {
            name: meta.name,
            digest,
            bytes,
            elapsed: started.elapsed(),
        })
    }

    /// Pulls snapshot `name` into `cache` (a no-op when the cache already holds it).
    pub async fn pull(
        &self,
        name: &str,
        cache: &SnapshotCache,
        opts: PullOptions,
    ) -> Result<(CacheEntry, Transfer), SnapshotError> {
        let started = Instant::now();
        crate::meta::validate_name(name)?;
        let pointer = self.get_small(&format!("names/{name}")).await?;
        let digest = String::from_utf8_lossy(&pointer).trim().to_owned();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.fail(&format!("names/{name}"), "does not hold a sha256 digest"));
        }
        let meta_rel = format!("objects/{digest}/{META_FILE}");
        let meta_bytes = self.get_small(&meta_rel).await?;
        let actual = sha256_bytes(&meta_bytes);
        if actual != digest {
            return Err(SnapshotError::DigestMismatch {
                path: self.url_of(&meta_rel).into(),
                expected: digest,
                actual,
            });
        }
        let meta = SnapshotMeta::parse(&meta_bytes, Path::new(&self.url_of(&meta_rel)))?;
        let staging = cache.staging("pull")?;
        std::fs::write(staging.path().join(META_FILE), &meta_bytes)
            .map_err(|e| SnapshotError::io(staging.path(), e))?;
        let mut bytes = 0;
        for file in &meta.files {
            let rel = format!("objects/{digest}/{}", file.path);
            let dst = staging.path().join(&file.path);
            self.download(&rel, file.bytes, &dst, opts).await?;
            bytes += file.bytes;
        }
        let staged_root = staging.path().to_owned();
        let cache_for_adopt = cache.clone();
        let entry = tokio::task::spawn_blocking(move || cache_for_adopt.adopt(staging))
            .await
            .map_err(|e| SnapshotError::InvalidBuild(e.to_string()))?
            .map_err(|e| self.name_object(e, &staged_root, &digest))?;
        Ok((
            entry,
            Transfer {
                name: name.to_owned(),
                digest,
                bytes,
                elapsed: started.elapsed(),
            },
        ))
    }

    /// Rewrites a verification error's staging path into the S3 object it came from.
    fn name_object(&self, e: SnapshotError, staged: &Path, digest: &str) -> SnapshotError {
        match e {
            SnapshotError::DigestMismatch {
                path,
                expected,
                actual,
            } => {
                let rel = path
                    .strip_prefix(staged)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                SnapshotError::DigestMismatch {
                    path: self.url_of(&format!("objects/{digest}/{rel}")).into(),
                    expected,
                    actual,
                }
            }
            other => other,
        }
    }

    /// Fetches `size` bytes of `rel` into `dst` with ranged GETs, `opts.parallel` at once.
    async fn download(
        &self,
        rel: &str,
        size: u64,
        dst: &Path,
        opts: PullOptions,
    ) -> Result<(), SnapshotError> {
        use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
        let file = std::fs::File::create(dst).map_err(|e| SnapshotError::io(dst, e))?;
        file.set_len(size).map_err(|e| SnapshotError::io(dst, e))?;
        let file = Arc::new(file);
        let part = opts.part_size.max(1);
        let parts: Vec<(u64, u64)> = (0..size.div_ceil(part))
            .map(|i| (i * part, ((i + 1) * part).min(size)))
            .collect();
        stream::iter(parts)
            .map(|(start, end)| {
                let file = Arc::clone(&file);
                async move { self.fetch_range(rel, start, end, &file).await }
            })
            .buffer_unordered(opts.parallel.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        file.sync_all().map_err(|e| SnapshotError::io(dst, e))?;
        Ok(())
    }

    /// One part, `[start, end)`, written at its offset. A broken stream resumes from the
    /// byte it reached.
    async fn fetch_range(
        &self,
        rel: &str,
        start: u64,
        end: u64,
        file: &std::fs::File,
    ) -> Result<(), SnapshotError> {
        let mut at = start;
        let mut attempt = 0;
        while at < end {
            attempt += 1;
            let result = async {
                let out = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(self.key(rel))
                    .range(format!("bytes={at}-{}", end - 1))
                    .send()
                    .await
                    .map_err(|e| error_chain(&e))?;
                let mut body = out.body;
                while let Some(chunk) = body.try_next().await.map_err(|e| e.to_string())? {
                    if at + chunk.len() as u64 > end {
                        return Err(format!(
                            "the store sent more than the {} bytes asked for",
                            end - start
                        ));
                    }
                    file.write_all_at(&chunk, at).map_err(|e| e.to_string())?;
                    at += chunk.len() as u64;
                }
                if at < end {
                    return Err(format!("the stream ended {} bytes early", end - at));
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= PART_ATTEMPTS => {
                    return Err(self.fail(
                        rel,
                        format!("{e} (bytes {start}-{end}, after {attempt} attempts)"),
                    ))
                }
                Err(e) => {
                    tracing::warn!(object = %self.url_of(rel), at, error = %e, "ranged GET failed; resuming");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        Ok(())
    }
}

/// An SDK error with its sources, which hold the useful part ("connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_an_optional_prefix() {
        assert_eq!(
            parse_url("s3://b/p/q/").ok(),
            Some(("b".into(), "p/q".into()))
        );
        assert_eq!(parse_url("s3://b").ok(), Some(("b".into(), String::new())));
        assert!(parse_url("http://b/p").is_err());
        assert!(parse_url("s3:///p").is_err());
    }
}
