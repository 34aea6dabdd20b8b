//! The SDK clients Rafter builds from its configuration, the per-call counter every client carries,
//! and how an SDK failure becomes an [`AwsError`] and then a `CloudError`.

use super::*;

/// AWS API calls by (service, operation), counted per attempt (retries included).
#[derive(Debug, Default)]
pub struct ApiCalls(Mutex<BTreeMap<(String, String), u64>>);

impl ApiCalls {
    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, service: &str, operation: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((service.to_string(), operation.to_string())).or_insert(0) += 1;
    }
}

#[derive(Debug)]
struct CountCalls(Arc<ApiCalls>);

impl aws_sdk_ec2::config::Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "RafterApiCallCounter"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_ec2::config::RuntimeComponents,
        cfg: &mut aws_sdk_ec2::config::ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        if let Some(m) = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>() {
            self.0.count(m.service(), m.name());
        }
        Ok(())
    }
}

/// The SDK clients Rafter uses.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub iam: aws_sdk_iam::Client,
    pub pricing: aws_sdk_pricing::Client,
}

impl Clients {
    /// Clients from aws-config's default chain, with adaptive retries (jittered exponential backoff
    /// and a client-side rate limit that slows down when EC2 throttles).
    pub async fn new(config: &AwsConfig, calls: Arc<ApiCalls>) -> Self {
        let retry = aws_config::retry::RetryConfig::adaptive()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(5));
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build();
        let shared =
            sdk_config(&config.region, config.endpoint.as_deref(), config.credentials.as_ref(), retry, timeouts).await;
        let mut ec2 = aws_sdk_ec2::config::Builder::from(&shared).interceptor(CountCalls(calls.clone()));
        for extra in &config.ec2_interceptors {
            ec2.push_interceptor(extra.clone());
        }
        let ec2 = ec2.build();
        // The Pricing API lives in a few regions only; us-east-1 answers for every region.
        let pricing_region = if config.endpoint.is_some() { config.region.clone() } else { "us-east-1".into() };
        Self {
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            ssm: aws_sdk_ssm::Client::from_conf(
                aws_sdk_ssm::config::Builder::from(&shared).interceptor(CountCalls(calls.clone())).build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(&shared).interceptor(CountCalls(calls.clone())).build(),
            ),
            // A failed price refresh keeps the shipped table, so it is not worth retrying.
            pricing: aws_sdk_pricing::Client::from_conf(
                aws_sdk_pricing::config::Builder::from(&shared)
                    .region(aws_config::Region::new(pricing_region))
                    .interceptor(CountCalls(calls))
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(5))
                            .operation_timeout(Duration::from_secs(60))
                            .build(),
                    )
                    .build(),
            ),
        }
    }
}

/// The SDK settings every Rafter client starts from: aws-config's default chain for credentials
/// (IRSA, EKS Pod Identity, environment, profile) unless static keys are given (emulators only),
/// and an endpoint override for emulators.
pub async fn sdk_config(
    region: &str,
    endpoint: Option<&str>,
    credentials: Option<&(String, String)>,
    retry: aws_config::retry::RetryConfig,
    timeouts: aws_config::timeout::TimeoutConfig,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((key, secret)) = credentials {
        loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
            key,
            secret,
            None,
            None,
            "rafter-static",
        ));
    }
    loader.load().await
}

/// An AWS call that failed, with EC2's code and message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    #[error("{operation}: {code}: {message}")]
    Api { operation: String, code: String, message: String, status: Option<u16> },
    #[error("{operation}: cannot reach AWS: {message}")]
    Transport { operation: String, message: String },
    #[error("cannot build an AWS request: {0}")]
    Build(String),
}

impl AwsError {
    pub fn sdk<E>(operation: &str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        match (err.code(), &err) {
            (Some(code), _) => AwsError::Api {
                operation: operation.into(),
                code: code.into(),
                message: err.message().unwrap_or_default().into(),
                status,
            },
            (None, SdkError::ServiceError(_) | SdkError::ResponseError(_)) => AwsError::Api {
                operation: operation.into(),
                code: format!("HTTP{}", status.unwrap_or(0)),
                message: aws_sdk_ec2::error::DisplayErrorContext(&err).to_string(),
                status,
            },
            _ => AwsError::Transport {
                operation: operation.into(),
                message: aws_sdk_ec2::error::DisplayErrorContext(&err).to_string(),
            },
        }
    }

    pub fn code_of<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
        err.code()
    }

    pub fn build(err: impl std::fmt::Display) -> Self {
        AwsError::Build(err.to_string())
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// What the controller should do about it.
    pub fn to_cloud(&self) -> CloudError {
        let message = self.to_string();
        match self {
            AwsError::Api { code, .. } if code.contains("NotFound") && code.starts_with("InvalidInstanceID") => {
                CloudError::NotFound { id: message }
            }
            AwsError::Api { code, .. }
                if code == "RequestLimitExceeded" || code == "Throttling" || code == "ThrottlingException" =>
            {
                CloudError::Throttled { message }
            }
            AwsError::Api { code, .. } if launch::is_configuration_error(code) => {
                CloudError::InvalidConfiguration { message }
            }
            AwsError::Build(_) => CloudError::InvalidConfiguration { message },
            _ => CloudError::Transient { message },
        }
    }
}

impl From<AwsError> for CloudError {
    fn from(e: AwsError) -> Self {
        e.to_cloud()
    }
}
