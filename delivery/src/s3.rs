//! `kind = "s3"`: an S3-compatible bucket, through the `object_store` crate.
//!
//! Whole or absent: a file of at most [`MULTIPART_THRESHOLD`] bytes is one `PUT`; a bigger one
//! is a multipart upload of [`PART_SIZE`] parts, read from disk as it goes (at most
//! [`MAX_PARTS_IN_FLIGHT`] parts and one buffer in memory), that is aborted on any error, so S3
//! shows the object only once `CompleteMultipartUpload` succeeded. Either way the request carries
//! the SHA-256 of each body (`x-amz-checksum-sha256`), which the server checks before it stores
//! anything. After the upload the object is read back, streamed, and its SHA-256 compared with
//! the local file's; an object that differs is deleted and the error is retryable. This holds
//! only if nobody else writes the same key at the same time (S3 keeps the last writer's object).
//!
//! Transport: `https` only, except plain `http` to this machine (a test server); credentials are
//! the configured static keys or `object_store`'s own sources (the `AWS_*` environment, web
//! identity, ECS task role, instance metadata). No error message holds a credential: messages
//! name the object (`s3://bucket/key`), the operation and the S3 error code, and any configured
//! secret that a server might echo is masked.
//!
//! Retention: [`Target::list`] is one `/`-delimited listing (`ListObjectsV2`, every page) of the
//! prefix, keeping the objects directly under it; [`Target::delete`] is one `DeleteObject` per
//! name (not the bulk `DeleteObjects`, whose refusals come back inside an HTTP 200 answer). A
//! refusal (403: no `s3:DeleteObject` permission, or a version that a retention or a legal hold
//! protects) is permanent. On a versioned bucket, Object Lock buckets included, a `DeleteObject`
//! without a version id does not remove data: S3 adds a delete marker, which it accepts even
//! while a retention protects the object, and the object's versions stay until the bucket's
//! lifecycle rules expire them.

use crate::{DeliveryError, LocalFile, Target};
use esg_auth::Secret;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsCredential, Checksum};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, RetryConfig, StaticCredentialProvider, WriteMultipart,
};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// One `[[delivery]]` table of `kind = "s3"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// A name for logs, metrics and the record (default `s3:<bucket>`).
    #[serde(default)]
    pub name: Option<String>,
    pub bucket: String,
    /// Put before each file name (`esg/daily/` → `esg/daily/FirmESGRatings_20261123.csv.age`).
    #[serde(default)]
    pub prefix: String,
    /// The bucket's region (default: `AWS_REGION`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible endpoint (`https://s3.internal.example:9000`); unset: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `sse-kms` (with `kms_key_id`) or `sse-s3`; unset: the bucket's default encryption.
    #[serde(default)]
    pub server_side_encryption: Option<String>,
    /// The KMS key (id, alias or ARN) of `sse-kms`.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Use an S3 Bucket Key with `sse-kms`.
    #[serde(default)]
    pub bucket_key: Option<bool>,
    /// Static credentials; unset, object_store's sources apply (the `AWS_*` environment, web
    /// identity, ECS task role, instance metadata).
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Virtual-hosted-style requests (`bucket.endpoint/key`); default path style for an
    /// `endpoint`, virtual-hosted on AWS.
    #[serde(default)]
    pub virtual_hosted_style: Option<bool>,
    /// PEM file of the CA that signed the endpoint's certificate (the firm's private CA).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Bound of one request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The values `server_side_encryption` takes.
const ENCRYPTIONS: &str = "`sse-kms` (with kms_key_id) or `sse-s3`";

impl S3Config {
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.bucket.trim().is_empty() {
            return Err(("bucket", "must name the bucket".into()));
        }
        if Path::parse(format!("{}probe", self.prefix)).is_err() {
            return Err((
                "prefix",
                format!(
                    "{:?} is not a usable key prefix (no leading `/`, no empty or `.` segments)",
                    self.prefix
                ),
            ));
        }
        match self.server_side_encryption.as_deref() {
            None | Some("sse-s3") => {
                if self.kms_key_id.is_some() {
                    return Err(("kms_key_id", "is only used with server_side_encryption = \"sse-kms\"".into()));
                }
                if self.bucket_key.is_some() {
                    return Err(("bucket_key", "is only used with server_side_encryption = \"sse-kms\"".into()));
                }
            }
            Some("sse-kms") => match self.kms_key_id.as_deref().map(str::trim) {
                Some(id) if !id.is_empty() => {}
                _ => {
                    return Err((
                        "kms_key_id",
                        "must name the KMS key (id, alias or ARN) of server_side_encryption = \"sse-kms\"".into(),
                    ))
                }
            },
            Some(other) => {
                return Err((
                    "server_side_encryption",
                    format!("is {other:?}; use {ENCRYPTIONS}"),
                ))
            }
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => {
                return Err(("secret_access_key", "must be set with access_key_id".into()))
            }
            (None, Some(_)) => {
                return Err(("access_key_id", "must be set with secret_access_key".into()))
            }
            (None, None) if self.session_token.is_some() => {
                return Err((
                    "session_token",
                    "is only used with access_key_id and secret_access_key".into(),
                ))
            }
            _ => {}
        }
        if let Some(endpoint) = &self.endpoint {
            check_endpoint(endpoint).map_err(|m| ("endpoint", m))?;
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be more than zero".into()));
        }
        Ok(())
    }
}

/// Parses `endpoint` and applies the transport rule: `https`, or `http` to this machine only.
fn check_endpoint(endpoint: &str) -> Result<url::Url, String> {
    // The URL is not echoed: a mistyped one may hold a password.
    let url = url::Url::parse(endpoint).map_err(|e| format!("is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials; use access_key_id and secret_access_key".into());
    }
    esg_auth::tls::check_transport(&url)?;
    Ok(url)
}

/// Files up to this size are one `PUT`; bigger ones a multipart upload.
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// The size of each part of a multipart upload but the last (S3 wants at least 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload sent at the same time.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;
/// How much of the file is read at a time.
const READ_BUFFER: usize = 1024 * 1024;

/// An S3 target.
pub struct S3Target {
    config: S3Config,
    store: AmazonS3,
    /// Configured secrets, masked in every message.
    secrets: Vec<String>,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("bucket", &self.config.bucket)
            .field("prefix", &self.config.prefix)
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Target {
    /// Builds the client (reads the CA file; no request is made).
    pub fn new(config: &S3Config) -> Result<Self, DeliveryError> {
        config
            .validate()
            .map_err(|(key, message)| DeliveryError::permanent(format!("{key}: {message}")))?;
        // `from_env` brings the `AWS_*` variables: credential sources, and settings such as a
        // proxy. What is configured here overrides them.
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        let region = config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(region);

        if let Some(endpoint) = &config.endpoint {
            // `AWS_ENDPOINT_URL_S3` would win over `endpoint`: the configuration wins here.
            builder = builder
                .with_config(AmazonS3ConfigKey::Endpoint, endpoint)
                .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint);
        }
        // The endpoint requests go to, configured or from the environment.
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
            .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
        let endpoint_url = match &endpoint {
            Some(e) => Some(
                check_endpoint(e).map_err(|m| DeliveryError::permanent(format!("endpoint {m}")))?,
            ),
            None => None,
        };
        let virtual_hosted = config.virtual_hosted_style.unwrap_or(endpoint.is_none());
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
        if let (Some(url), true) = (&endpoint_url, virtual_hosted) {
            // object_store expects the bucket in a virtual-hosted endpoint's host name.
            builder = builder.with_config(
                AmazonS3ConfigKey::S3Endpoint,
                bucket_endpoint(url, &config.bucket)?,
            );
        }

        if let (Some(key_id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            // A provider rather than `with_access_key_id`: an `AWS_SESSION_TOKEN` of the
            // environment must not be paired with configured keys.
            let credential = AwsCredential {
                key_id: key_id.clone(),
                secret_key: secret.expose().to_owned(),
                token: config.session_token.as_ref().map(|t| t.expose().to_owned()),
            };
            builder = builder.with_credentials(Arc::new(StaticCredentialProvider::new(credential)));
        }

        match config.server_side_encryption.as_deref() {
            Some("sse-kms") => {
                let key = config.kms_key_id.as_deref().unwrap_or_default().trim();
                builder = builder.with_sse_kms_encryption(key);
                if let Some(enabled) = config.bucket_key {
                    builder = builder.with_bucket_key(enabled);
                }
            }
            Some("sse-s3") => {
                // object_store has no `with_sse_s3`; its config key takes the header's value.
                let key: AmazonS3ConfigKey = "aws_server_side_encryption".parse().map_err(|e| {
                    DeliveryError::permanent(format!("server_side_encryption: {e}"))
                })?;
                builder = builder.with_config(key, "AES256");
            }
            _ => {}
        }
        // Every PUT and part carries `x-amz-checksum-sha256`: the server refuses a body that
        // changed on the way (BadDigest) before storing it. AWS and SeaweedFS (the test server)
        // check it; the read-back after the upload covers servers that only store it.
        builder = builder.with_checksum_algorithm(Checksum::SHA256);
        // `delete` as one `DeleteObject` (`DELETE /key`) rather than a bulk `DeleteObjects` of
        // one key: a refused bulk delete is an HTTP 200 with the error inside, which `classify`
        // would not see as a refusal.
        builder = builder.with_disable_bulk_delete(true);

        // Neither plain http to another host nor unchecked certificates, whatever the
        // environment says (`AWS_ALLOW_HTTP`, `AWS_ALLOW_INVALID_CERTIFICATES`).
        let mut options = client_options_from_env()
            .with_allow_http(endpoint_url.as_ref().is_some_and(|u| u.scheme() == "http"))
            .with_allow_invalid_certificates(false)
            .with_timeout(config.timeout)
            .with_connect_timeout(config.timeout.min(Duration::from_secs(10)));
        if let Some(path) = &config.tls_ca_file {
            // Added to the system's roots, not instead of them: the same client may fetch
            // credentials from AWS (web identity, STS) while the bucket is behind the firm's CA.
            let pem = std::fs::read(path).map_err(|e| {
                DeliveryError::permanent(format!(
                    "tls_ca_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let roots = Certificate::from_pem_bundle(&pem).map_err(|e| {
                DeliveryError::permanent(format!(
                    "tls_ca_file: {} is not a PEM certificate bundle: {e}",
                    path.display()
                ))
            })?;
            if roots.is_empty() {
                return Err(DeliveryError::permanent(format!(
                    "tls_ca_file: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
            for root in roots {
                options = options.with_root_certificate(root);
            }
        }
        builder = builder
            .with_client_options(options)
            .with_retry(RetryConfig {
                // The delivery loop retries the whole file with its own backoff; object_store's
                // retries only ride out a short blip.
                max_retries: 3,
                retry_timeout: config.timeout,
                ..RetryConfig::default()
            });

        let mut secrets: Vec<String> = [
            config
                .secret_access_key
                .as_ref()
                .map(|s| s.expose().to_owned()),
            config.session_token.as_ref().map(|s| s.expose().to_owned()),
            config.access_key_id.clone(),
            // Credentials object_store takes from the environment.
            std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
            std::env::var("AWS_SESSION_TOKEN").ok(),
        ]
        .into_iter()
        .flatten()
        .filter(|s| s.len() >= 4)
        .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));

        let store = builder.build().map_err(|e| {
            DeliveryError::permanent(mask(&format!("s3://{}: {e}", config.bucket), &secrets))
        })?;
        Ok(S3Target {
            config: config.clone(),
            store,
            secrets,
        })
    }

    fn key(&self, name: &str) -> Result<Path, DeliveryError> {
        Path::parse(format!("{}{name}", self.config.prefix)).map_err(|e| {
            DeliveryError::permanent(format!(
                "{}: not a usable object key: {e}",
                self.object(name)
            ))
        })
    }

    /// Refuses a name that is not directly under the prefix (delete takes what `list` gives).
    fn check_name(&self, name: &str) -> Result<(), DeliveryError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(DeliveryError::permanent(format!(
                "{}: cannot delete {name:?}: not the name of an object directly under the prefix",
                self.object("")
            )));
        }
        Ok(())
    }

    fn fail(&self, object: &str, op: Op, e: &object_store::Error) -> DeliveryError {
        let mut error = classify(object, op, e);
        error.message = mask(&error.message, &self.secrets);
        error
    }

    /// One `PUT` of the whole (small) file.
    async fn put_single(
        &self,
        file: &LocalFile,
        key: &Path,
        object: &str,
    ) -> Result<(), DeliveryError> {
        let bytes = tokio::fs::read(&file.path)
            .await
            .map_err(|e| local_error(file, e))?;
        self.store
            .put_opts(key, PutPayload::from(bytes), PutOptions::default())
            .await
            .map_err(|e| self.fail(object, Op::Put, &e))?;
        Ok(())
    }

    /// A multipart upload read from disk as it goes; aborted on any error.
    async fn put_multipart(
        &self,
        file: &LocalFile,
        key: &Path,
        object: &str,
    ) -> Result<(), DeliveryError> {
        let mut source = tokio::fs::File::open(&file.path)
            .await
            .map_err(|e| local_error(file, e))?;
        let upload = self
            .store
            .put_multipart_opts(key, PutMultipartOptions::default())
            .await
            .map_err(|e| self.fail(object, Op::Put, &e))?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; READ_BUFFER];
        let failure = loop {
            if let Err(e) = upload.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await {
                break self.fail(object, Op::Put, &e);
            }
            match source.read(&mut buf).await {
                Ok(0) => {
                    // `finish` aborts the upload itself when a part or the completion fails.
                    return upload
                        .finish()
                        .await
                        .map(|_| ())
                        .map_err(|e| self.fail(object, Op::Put, &e));
                }
                Ok(n) => upload.write(&buf[..n]),
                Err(e) => break local_error(file, e),
            }
        };
        if let Err(e) = upload.abort().await {
            // Parts of an aborted-but-not-confirmed upload are invisible; a bucket lifecycle
            // rule (AbortIncompleteMultipartUpload) removes them.
            tracing::warn!(object = %object, error = %self.fail(object, Op::Abort, &e), "cannot abort the multipart upload");
        }
        Err(failure)
    }

    /// Reads the object back and compares its SHA-256 and size with the local file's.
    async fn verify(
        &self,
        file: &LocalFile,
        key: &Path,
        object: &str,
    ) -> Result<(), DeliveryError> {
        let result = self
            .store
            .get(key)
            .await
            .map_err(|e| self.fail(object, Op::Verify, &e))?;
        let mut stream = result.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.fail(object, Op::Verify, &e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        let sha256 = format!("{:x}", hasher.finalize());
        if sha256 == file.sha256 && size == file.size {
            return Ok(());
        }
        let deleted = match self.store.delete(key).await {
            Ok(()) => "deleted it".to_owned(),
            Err(e) => format!(
                "and could not delete it: {}",
                self.fail(object, Op::Delete, &e)
            ),
        };
        Err(DeliveryError::retryable(format!(
            "{object} holds other bytes than the local file after the upload (sha256 {sha256}, \
             {size} bytes; expected {}, {} bytes); {deleted}",
            file.sha256, file.size
        )))
    }
}

fn local_error(file: &LocalFile, e: std::io::Error) -> DeliveryError {
    DeliveryError::permanent(format!("cannot read {}: {e}", file.path.display()))
}

/// The virtual-hosted endpoint of `bucket`: its name before the endpoint's host name.
fn bucket_endpoint(url: &url::Url, bucket: &str) -> Result<String, DeliveryError> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Err(DeliveryError::permanent(
            "virtual_hosted_style: the endpoint must be a host name, not an IP address",
        ));
    };
    if host.starts_with(&format!("{bucket}.")) {
        return Ok(url.as_str().trim_end_matches('/').to_owned());
    }
    let mut url = url.clone();
    url.set_host(Some(&format!("{bucket}.{host}")))
        .map_err(|e| DeliveryError::permanent(format!("virtual_hosted_style: {e}")))?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The client settings of the `AWS_*` environment (a proxy, …), as `from_env` would have kept
/// them: `with_client_options` replaces the builder's.
fn client_options_from_env() -> ClientOptions {
    let mut options = ClientOptions::new();
    for (key, value) in std::env::vars() {
        if let Some(name) = key.strip_prefix("AWS_") {
            if let Ok(AmazonS3ConfigKey::Client(k)) = name.to_ascii_lowercase().parse() {
                options = options.with_config(k, value);
            }
        }
    }
    options
}

/// Replaces every configured secret in `message` with `***`.
fn mask(message: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(message.to_owned(), |m, s| m.replace(s.as_str(), "***"))
}

/// What was being done when a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Verify,
    Delete,
    Abort,
    Check,
    List,
}

impl Op {
    fn describe(self) -> &'static str {
        match self {
            Op::Put => "upload",
            Op::Verify => "read-back",
            Op::Delete => "delete",
            Op::Abort => "abort of the multipart upload",
            Op::Check => "check (create and abort a multipart upload)",
            Op::List => "listing",
        }
    }
}

/// S3 error codes that another try may cure although their status is 4xx.
const RETRYABLE_CODES: &[&str] = &[
    "RequestTimeout",
    "BadDigest",
    "IncompleteBody",
    "ExpiredToken",
    "OperationAborted",
    "SlowDown",
    "XAmzContentSHA256Mismatch",
];

/// Sorts an object_store error into retryable or permanent, with a message that names the
/// object, the operation, the HTTP status and the S3 error code, and no response body beyond
/// the S3 `<Message>`.
fn classify(object: &str, op: Op, e: &object_store::Error) -> DeliveryError {
    let what = op.describe();
    let chain = error_chain(e);
    let status = http_status(&chain);
    let code = xml_element(&chain, "Code");
    let detail = match (status, &code) {
        (Some(s), Some(c)) => {
            let message = xml_element(&chain, "Message")
                .map(|m| format!(": {}", truncate(&m, 200)))
                .unwrap_or_default();
            format!("HTTP {s} {c}{message}")
        }
        (Some(s), None) => format!("HTTP {s}"),
        (None, _) => match transport_error(e) {
            Some((kind, text)) => format!("{}: {text}", transport_kind(kind)),
            None => truncate(&chain, 400),
        },
    };
    let message = format!("{object}: {what} failed: {detail}");
    // What a 403 means: for a removal, AWS (and SeaweedFS) answer a version that a retention or
    // a legal hold protects with 403 AccessDenied as well.
    let refused = if op == Op::Delete {
        "the store refused the removal: no delete permission, or a retention or legal hold"
    } else {
        "the credentials are refused or lack permission"
    };
    use object_store::Error as E;
    match e {
        E::Unauthenticated { .. } | E::PermissionDenied { .. } => {
            DeliveryError::permanent(format!("{message} ({refused})"))
        }
        // After a successful upload a missing object is a race (a concurrent delete) worth
        // another try; anywhere else it is the bucket that is missing.
        E::NotFound { .. } if op == Op::Verify && code.as_deref() != Some("NoSuchBucket") => {
            DeliveryError::retryable(format!("{message} (the object vanished after the upload)"))
        }
        E::NotFound { .. } => {
            DeliveryError::permanent(format!("{message} (does the bucket exist?)"))
        }
        E::Precondition { .. } | E::AlreadyExists { .. } | E::NotModified { .. } => {
            DeliveryError::retryable(message)
        }
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => DeliveryError::permanent(message),
        _ => match (status, code.as_deref()) {
            (_, Some(c)) if RETRYABLE_CODES.contains(&c) => DeliveryError::retryable(message),
            (Some(s), _) if s >= 500 || s == 408 || s == 429 => DeliveryError::retryable(message),
            (Some(403), _) => DeliveryError::permanent(format!("{message} ({refused})")),
            (Some(404), _) => {
                DeliveryError::permanent(format!("{message} (does the bucket exist?)"))
            }
            // AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, NoSuchBucket, a KMS key
            // that does not exist, an argument the server does not take: waiting cures none.
            (Some(_), _) => DeliveryError::permanent(message),
            // A server certificate the job does not trust (an unknown issuer, another name,
            // expired): waiting does not cure it, and the data must not go there.
            (None, _) if chain.contains("invalid peer certificate") => DeliveryError::permanent(
                format!("{message} (the server's certificate is not trusted: tls_ca_file?)"),
            ),
            // No response: the connection, a timeout, a body that broke off.
            (None, _) => DeliveryError::retryable(message),
        },
    }
}

/// The error and its sources, one after the other.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The HTTP status of object_store's `Server returned non-2xx status code: 403 Forbidden`.
///
/// object_store keeps its `RetryError` (which has `status()`) private, so the status is read
/// from its message.
fn http_status(chain: &str) -> Option<u16> {
    let (_, rest) = chain.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

/// The text of the first `<name>…</name>` of an S3 error body.
fn xml_element(chain: &str, name: &str) -> Option<String> {
    let (_, rest) = chain.split_once(&format!("<{name}>"))?;
    let (value, _) = rest.split_once(&format!("</{name}>"))?;
    Some(value.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The transport error in the chain, if the request got no response.
fn transport_error(e: &(dyn std::error::Error + 'static)) -> Option<(HttpErrorKind, String)> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(http) = err.downcast_ref::<HttpError>() {
            return Some((http.kind(), error_chain(http)));
        }
        current = err.source();
    }
    None
}

fn transport_kind(kind: HttpErrorKind) -> &'static str {
    match kind {
        HttpErrorKind::Connect => "cannot connect",
        HttpErrorKind::Timeout => "timed out",
        HttpErrorKind::Interrupted => "connection interrupted",
        HttpErrorKind::Request => "request failed",
        HttpErrorKind::Decode => "bad response",
        _ => "transport error",
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[async_trait::async_trait]
impl Target for S3Target {
    fn object(&self, name: &str) -> String {
        format!("s3://{}/{}{name}", self.config.bucket, self.config.prefix)
    }

    async fn put(&self, file: &LocalFile) -> Result<(), DeliveryError> {
        let key = self.key(&file.name)?;
        let object = self.object(&file.name);
        // By the size on disk now, not when it was hashed: one PUT never holds more than the
        // threshold in memory. A file that changed fails the read-back.
        let size = tokio::fs::metadata(&file.path)
            .await
            .map_err(|e| local_error(file, e))?
            .len();
        let multipart = size > MULTIPART_THRESHOLD;
        if multipart {
            self.put_multipart(file, &key, &object).await?;
        } else {
            self.put_single(file, &key, &object).await?;
        }
        tracing::debug!(object = %object, bytes = size, multipart, "object uploaded; reading it back");
        self.verify(file, &key, &object).await
    }

    /// A `/`-delimited listing of the prefix's "directory" (the prefix up to its last `/`),
    /// keeping the objects there whose name starts with the rest of the prefix: `esg/daily/`
    /// lists `esg/daily/*`, `esg/out-` lists `esg/out-*`, and neither descends further.
    async fn list(&self) -> Result<Vec<String>, DeliveryError> {
        let prefix = self.config.prefix.as_str();
        let (dir, stem) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let object = self.object("");
        let dir_path = match dir {
            "" => None,
            dir => Some(Path::parse(dir).map_err(|e| {
                DeliveryError::permanent(format!("{object}: not a usable key prefix: {e}"))
            })?),
        };
        let listing = self
            .store
            .list_with_delimiter(dir_path.as_ref())
            .await
            .map_err(|e| self.fail(&object, Op::List, &e))?;
        let mut names: Vec<String> = listing
            .objects
            .iter()
            .filter_map(|meta| {
                let key = meta.location.as_ref();
                let in_dir = match dir {
                    "" => Some(key),
                    // Not the directory's own marker object (`esg/daily/`, parsed as `esg/daily`).
                    dir => key.strip_prefix(dir)?.strip_prefix('/'),
                };
                let name = in_dir.filter(|n| !n.contains('/'))?.strip_prefix(stem)?;
                (!name.is_empty()).then(|| name.to_owned())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// `DeleteObject`: S3 answers 204 for a key that is not there, so that is not an error.
    async fn delete(&self, name: &str) -> Result<(), DeliveryError> {
        self.check_name(name)?;
        let key = self.key(name)?;
        let object = self.object(name);
        match self.store.delete(&key).await {
            Ok(()) => Ok(()),
            // A server that says so rather than 204: gone already. (NoSuchBucket is an error.)
            Err(e @ object_store::Error::NotFound { .. })
                if xml_element(&error_chain(&e), "Code").as_deref() == Some("NoSuchKey") =>
            {
                Ok(())
            }
            Err(e) => Err(self.fail(&object, Op::Delete, &e)),
        }
    }

    /// Starts a multipart upload of a probe key and aborts it: that proves the bucket exists and
    /// the credentials may write to it (and, with SSE-KMS, use the key, which S3 checks when the
    /// upload is created), without an object appearing, even for a moment, and without needing
    /// the list or delete permission a delivery does not use.
    async fn check(&self) -> Result<(), DeliveryError> {
        let name = format!(".esg-check.{}", std::process::id());
        let key = self.key(&name)?;
        let object = self.object(&name);
        let mut upload = self
            .store
            .put_multipart_opts(&key, PutMultipartOptions::default())
            .await
            .map_err(|e| self.fail(&object, Op::Check, &e))?;
        upload
            .abort()
            .await
            .map_err(|e| self.fail(&object, Op::Abort, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3Config {
        toml::from_str("bucket = \"esg-out\"\nendpoint = \"http://127.0.0.1:9000\"\n")
            .expect("config")
    }

    #[test]
    fn encryption_is_sse_kms_with_a_key_or_sse_s3() {
        let mut c = config();
        c.server_side_encryption = Some("sse-kms".into());
        assert_eq!(c.validate().map_err(|e| e.0), Err("kms_key_id"));
        c.kms_key_id = Some("alias/esg".into());
        c.bucket_key = Some(true);
        assert_eq!(c.validate(), Ok(()));
        c.server_side_encryption = Some("sse-s3".into());
        assert_eq!(c.validate().map_err(|e| e.0), Err("kms_key_id"));
        c.kms_key_id = None;
        c.bucket_key = None;
        assert_eq!(c.validate(), Ok(()));
        c.server_side_encryption = Some("aws:kms".into());
        let (key, message) = c.validate().expect_err("aws:kms");
        assert_eq!(key, "server_side_encryption");
        assert!(
            message.contains("sse-kms") && message.contains("sse-s3"),
            "{message}"
        );
    }

    #[test]
    fn plain_http_only_to_this_machine() {
        let mut c = config();
        for ok in [
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://[::1]:9000",
            "https://s3.firm.example",
        ] {
            c.endpoint = Some(ok.into());
            assert_eq!(c.validate(), Ok(()), "{ok}");
        }
        for refused in [
            "http://s3.firm.example:9000",
            "http://10.1.2.3",
            "https://u:pa55w0rd@s3.firm.example",
        ] {
            c.endpoint = Some(refused.into());
            let (key, message) = c.validate().expect_err(refused);
            assert_eq!(key, "endpoint");
            assert!(!message.contains("pa55w0rd"), "{message}");
        }
    }

    #[test]
    fn status_and_code_are_read_from_object_store_messages() {
        let text = "Error performing PUT http://127.0.0.1:1/b/k in 3ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";
        assert_eq!(http_status(text), Some(403));
        assert_eq!(
            xml_element(text, "Code").as_deref(),
            Some("InvalidAccessKeyId")
        );
        assert_eq!(http_status("no status here"), None);
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_at_construction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("ca.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let mut c = config();
        c.access_key_id = Some("AKIAEXAMPLE000000000".into());
        c.secret_access_key = Some(Secret::new("secretThatMustNotBeEchoed"));
        c.tls_ca_file = Some(junk);
        let error = S3Target::new(&c).expect_err("junk CA");
        assert!(!error.retryable, "{error}");
        assert!(error.message.starts_with("tls_ca_file: "), "{error}");
    }

    #[test]
    fn a_virtual_hosted_endpoint_has_the_bucket_in_its_host_name() {
        let url = url::Url::parse("https://s3.firm.example:9000").expect("url");
        assert_eq!(
            bucket_endpoint(&url, "esg-out").expect("endpoint"),
            "https://esg-out.s3.firm.example:9000"
        );
        let url = url::Url::parse("https://esg-out.s3.firm.example").expect("url");
        assert_eq!(
            bucket_endpoint(&url, "esg-out").expect("endpoint"),
            "https://esg-out.s3.firm.example"
        );
        let url = url::Url::parse("https://10.0.0.1:9000").expect("url");
        assert!(bucket_endpoint(&url, "esg-out").is_err());
    }

    #[test]
    fn secrets_are_masked() {
        let secrets = vec!["wJalrXUtnFEMI".to_owned()];
        assert_eq!(mask("key wJalrXUtnFEMI echoed", &secrets), "key *** echoed");
    }
}
