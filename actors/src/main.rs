//! The `rafter` command line: the controller, its CRDs, the legacy manifest converter and the solver.
#![forbid(unsafe_code)]

mod config;

use rafter_actors::context::BindingMode;
use rafter_actors::{demo, telemetry};

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rafter::api::convert::ConversionOptions;
use rafter::api::{crds, manifest};

use config::{LogFormat, RunArgs};

/// Rafter: just-in-time nodes for Kubernetes, compatible with Karpenter's APIs.
#[derive(Debug, Parser)]
#[command(name = "rafter", version, about, propagate_version = true)]
struct Cli {
    /// How log lines are written.
    #[arg(long, global = true, env = "RAFTER_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller against a cluster.
    Run(Box<RunArgs>),
    /// The whole story on this machine, no cluster or cloud needed: a simulated cluster and cloud,
    /// two replicas, inflate scaled 0 → 100, the leader killed, a spot node interrupted, scaled to 30
    /// and consolidated, scaled to 0; a timeline and summary.
    Demo(DemoArgs),
    /// Print every CustomResourceDefinition Rafter serves (v1 and legacy) as YAML.
    Crds {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Convert legacy Provisioner and AWSNodeTemplate manifests to v1 NodePool and EC2NodeClass YAML.
    Convert {
        /// Manifest file to read, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Instance profile for templates that name none (legacy `aws.defaultInstanceProfile`).
        #[arg(long, env = "RAFTER_DEFAULT_INSTANCE_PROFILE")]
        default_instance_profile: Option<String>,
        /// IAM role for templates that name no instance profile, instead of a profile.
        #[arg(long, conflicts_with = "default_instance_profile")]
        role: Option<String>,
        /// The cluster's name: templates without subnet or security group selectors discover
        /// them by the `kubernetes.io/cluster/<name>` tag, as legacy Karpenter did.
        #[arg(long, env = "CLUSTER_NAME")]
        cluster_name: Option<String>,
    },
    /// Plan machines for pending pods: reads pods, NodePools, node classes, nodes and DaemonSets
    /// from one YAML or JSON document and prints the plan as JSON.
    Solve {
        /// The scheduling problem, or - for standard input (format: see the README).
        #[arg(long)]
        input: String,
        /// `aws-us-east-1` (shipped) or a CSV file in the same layout.
        #[arg(long, default_value = "aws-us-east-1")]
        catalog: String,
        /// Spot price as a share of on-demand; the catalog carries no spot prices.
        #[arg(long, default_value_t = 0.4)]
        spot_price_ratio: f64,
    },
    /// Print the disruption command the controller would issue next against a live cluster, and
    /// why every other node stays. Reads the cluster once and writes nothing.
    Disrupt {
        /// Required: this command only ever shows what would happen; the controller carries it out.
        #[arg(long)]
        dry_run: bool,
        /// Kubeconfig to use.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Kubeconfig context to use instead of the current one.
        #[arg(long)]
        context: Option<String>,
        /// Prices: `aws-us-east-1` (shipped) or a CSV file in the same layout.
        #[arg(long, default_value = "aws-us-east-1")]
        catalog: String,
        /// Spot price as a share of on-demand; the catalog carries no spot prices.
        #[arg(long, default_value_t = 0.4)]
        spot_price_ratio: f64,
        /// The smallest saving of a replacement, as `rafter run` takes it.
        #[arg(long, default_value = "5%", value_parser = parse_min_saving)]
        consolidation_min_saving: f64,
        /// Print the decision as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The simulated world Rafter is tested in.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Print the version.
    Version,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Rafter replicas to run (one leads, the others stand by).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Replicas of inflate to scale to.
    #[arg(long, default_value_t = 100)]
    pods: u32,
    /// From launch until an instance runs.
    #[arg(long, default_value = "2s", value_parser = config::parse_flag_duration)]
    boot_delay: std::time::Duration,
    /// How pods reach new nodes.
    #[arg(long, value_enum, default_value = "scheduler")]
    binding: BindingMode,
    /// The NodePool's consolidateAfter for the demo (the example says 1m).
    #[arg(long, default_value = "10s", value_parser = config::parse_flag_duration)]
    consolidate_after: std::time::Duration,
    /// Run against this API server instead of the embedded simulator.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where machines come from: the in-memory cloud, or EC2 as emulated at --aws-endpoint.
    #[arg(long, value_enum, default_value = "fake")]
    cloud: config::CloudKind,
    /// An EC2 emulator (e.g. moto's server at http://127.0.0.1:5000) for `--cloud aws`; the demo
    /// never launches real instances.
    #[arg(long)]
    aws_endpoint: Option<String>,
    /// Export spans over OTLP/HTTP to this endpoint (e.g. http://localhost:4318 for Jaeger).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp: Option<String>,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// Run the in-memory Kubernetes API server on 127.0.0.1 until interrupted, with simulated
    /// nodes (following the fake cloud), scheduler and workload controllers.
    Apiserver {
        /// Port to listen on; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Write a kubeconfig for kubectl and `rafter run` here.
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
        /// Serve the API only: no simulated nodes, scheduler or workload controllers.
        #[arg(long)]
        api_only: bool,
        /// Install Rafter's CRDs at start.
        #[arg(long)]
        install_crds: bool,
    },
    /// Only the simulated kubelets, against any API server: a Node for every instance an EC2
    /// emulator runs for the cluster (moto's server, shared with `rafter run --cloud aws`), its Lease
    /// and status kept fresh and its pods run. With a real kube-scheduler and kube-controller-manager
    /// (kind, a dev cluster), this is Rafter on your own cluster without EC2.
    Kubelets {
        /// kubeconfig of the API server to register the nodes with.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        /// The EC2 emulator whose instances become nodes (required: nothing here reaches AWS).
        #[arg(long)]
        aws_endpoint: String,
        /// The cluster whose instances (tag kubernetes.io/cluster/NAME) become nodes.
        #[arg(long, default_value = "demo")]
        cluster_name: String,
        /// Region of the emulator.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// How long a new node reports NotReady before Ready (a CNI starting).
        #[arg(long, default_value = "0s", value_parser = config::parse_flag_duration)]
        ready_delay: std::time::Duration,
        /// How long the claim's startup taints stay on a new node.
        #[arg(long, default_value = "0s", value_parser = config::parse_flag_duration)]
        startup_taint_delay: std::time::Duration,
        /// From a pod's binding until it runs.
        #[arg(long, default_value = "0s", value_parser = config::parse_flag_duration)]
        pod_start_delay: std::time::Duration,
        /// First create in the emulator what an EKS cluster has (a VPC with a subnet per zone and a
        /// security group tagged `karpenter.sh/discovery: CLUSTER`, the node role), as the demo does.
        #[arg(long)]
        seed: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.log_format == LogFormat::Json;
    let result = match cli.command {
        Command::Run(args) => run(*args, json),
        Command::Demo(args) => run_demo(args, json),
        command => {
            if let Err(e) = telemetry::init(json, None) {
                eprintln!("warning: {e}");
            }
            other(command)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn other(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(_) | Command::Demo(_) => Ok(()),
        Command::Crds { dir } => print_crds(dir.as_deref()),
        Command::Convert { file, default_instance_profile, role, cluster_name } => {
            convert(&file, &ConversionOptions { default_instance_profile, role, cluster_name })
        }
        Command::Solve { input, catalog, spot_price_ratio } => solve(&input, &catalog, spot_price_ratio),
        Command::Disrupt {
            dry_run,
            kubeconfig,
            context,
            catalog,
            spot_price_ratio,
            consolidation_min_saving,
            json,
        } => {
            if !dry_run {
                bail!(
                    "rafter disrupt only runs with --dry-run: it shows what the controller would do, and the controller does it"
                );
            }
            disrupt_dry_run(kubeconfig, context, &catalog, spot_price_ratio, consolidation_min_saving, json)
        }
        Command::Sim(SimCommand::Apiserver { port, kubeconfig_out, api_only, install_crds }) => {
            sim_apiserver(port, kubeconfig_out.as_deref(), api_only, install_crds)
        }
        Command::Sim(SimCommand::Kubelets {
            kubeconfig,
            aws_endpoint,
            cluster_name,
            region,
            ready_delay,
            startup_taint_delay,
            pod_start_delay,
            seed,
        }) => {
            let nodes = rafter_sim::nodes::NodeSimConfig {
                owner: format!("kubelets/{cluster_name}"),
                ready_delay,
                startup_taint_delay,
                pod_start_delay,
                ..rafter_sim::nodes::NodeSimConfig::default()
            };
            sim_kubelets(&kubeconfig, &aws_endpoint, &cluster_name, &region, seed, nodes)
        }
        Command::Version => {
            println!("rafter {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

fn run_demo(args: DemoArgs, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let aws_endpoint = match (args.cloud, args.aws_endpoint) {
            (config::CloudKind::Fake, _) => None,
            (config::CloudKind::Aws, Some(endpoint)) => Some(endpoint),
            (config::CloudKind::Aws, None) => bail!(
                "rafter demo --cloud aws needs --aws-endpoint (an EC2 emulator such as moto's server); the demo never launches real instances"
            ),
        };
        let mut guard = telemetry::init(json, args.otlp.as_deref())?;
        let config = demo::DemoConfig {
            aws_endpoint,
            replicas: args.replicas,
            pods: args.pods,
            boot_delay: args.boot_delay,
            binding: args.binding,
            kubeconfig: args.kubeconfig,
            consolidate_after: args.consolidate_after,
            ..demo::DemoConfig::default()
        };
        let summary = demo::run(config, |line| println!("{line}")).await.context("the demo failed")?;
        println!("{}", summary.render());
        guard.shutdown();
        Ok(())
    })
}

fn sim_apiserver(port: u16, kubeconfig: Option<&Path>, api_only: bool, install_crds: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let config = rafter_sim::ServerConfig { port, ..rafter_sim::ServerConfig::default() };
        let sim = rafter_sim::Simulator::start_with(config).await?;
        let client = sim.client();
        if install_crds {
            let api: kube::Api<
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
            > = kube::Api::all(client.clone());
            for (_, crd) in crds::all() {
                api.create(&kube::api::PostParams::default(), &crd).await.context("installing the CRDs")?;
            }
        }
        let mut components = Vec::new();
        if !api_only {
            let cloud =
                std::sync::Arc::new(rafter::cloud::fake::FakeCloud::new(rafter::cloud::fake::FakeConfig::default())?);
            components.push(rafter_sim::workloads::spawn(client.clone()));
            components.push(rafter_sim::scheduler::spawn(client.clone()));
            components.push(rafter_sim::lifecycle::spawn(client.clone(), Default::default()));
            let feed = std::sync::Arc::new(rafter_sim::nodes::FakeFeed(cloud));
            components.push(rafter_sim::nodes::spawn(
                client.clone(),
                feed,
                rafter_sim::nodes::NodeSimConfig::default(),
            ));
        }
        if let Some(path) = kubeconfig {
            sim.write_kubeconfig(path)?;
        }
        tracing::info!(url = %sim.url(), kubeconfig = ?kubeconfig, "API server listening");
        println!("{}", sim.url());
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        drop(components);
        Ok(())
    })
}

fn sim_kubelets(
    kubeconfig: &Path,
    endpoint: &str,
    cluster: &str,
    region: &str,
    seed: bool,
    nodes: rafter_sim::nodes::NodeSimConfig,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        if seed {
            rafter_sim::moto::seed(endpoint, None, cluster, "1.33")
                .await
                .with_context(|| format!("seeding the emulator at {endpoint}"))?;
        }
        let config = rafter_actors::world::kubeconfig(kubeconfig, None).await?;
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        let mut aws = rafter_aws::AwsConfig::new(cluster, region);
        aws.endpoint = Some(endpoint.to_string());
        // An emulator takes any keys; the environment's are used when set.
        let (test_key, test_secret) = rafter_sim::moto::TEST_CREDENTIALS;
        let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| test_key.into());
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| test_secret.into());
        aws.credentials = Some((key, secret));
        let classes = std::sync::Arc::new(rafter_actors::nodeclass::WatchedNodeClasses::start(client.clone()));
        let cloud = rafter_aws::AwsCloud::new(aws, classes).await;
        let feed =
            rafter_sim::nodes::PollingFeed::new(std::sync::Arc::new(cloud), std::time::Duration::from_millis(250))
                .context("loading the shipped instance catalog")?;
        let kubelets = rafter_sim::nodes::spawn(client, std::sync::Arc::new(feed), nodes);
        tracing::info!(endpoint, cluster, "simulated kubelets following the cluster's instances");
        println!("kubelets following {endpoint} for cluster {cluster}");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        drop(kubelets);
        Ok(())
    })
}

fn print_crds(dir: Option<&Path>) -> anyhow::Result<()> {
    match dir {
        None => {
            let yaml = crds::all_yaml().context("serialising the CRDs")?;
            std::io::stdout().write_all(yaml.as_bytes()).context("writing to standard output")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, crd) in crds::all() {
                let path = dir.join(file);
                let yaml = crds::to_yaml(&crd).context("serialising a CRD")?;
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

fn convert(file: &str, options: &ConversionOptions) -> anyhow::Result<()> {
    let (name, text) = read_input(file)?;
    match manifest::convert_manifests(&text, options) {
        Ok(yaml) => {
            std::io::stdout().write_all(yaml.as_bytes()).context("writing to standard output")?;
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{name}:{e}");
            }
            bail!("{name}: {} problem(s); nothing was converted", errors.len())
        }
    }
}

fn read_input(file: &str) -> anyhow::Result<(String, String)> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
        Ok(("<stdin>".to_string(), text))
    } else {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        Ok((file.to_string(), text))
    }
}

fn parse_min_saving(text: &str) -> Result<f64, String> {
    rafter::disruption::parse_min_saving(text)
}

/// The instance catalog `--catalog` names, and a checked `--spot-price-ratio`.
fn load_catalog(
    catalog: &str,
    spot_price_ratio: f64,
) -> anyhow::Result<Vec<rafter::scheduling::instance_types::InstanceTypeSpec>> {
    use rafter::scheduling::catalog as shipped;
    if !(spot_price_ratio > 0.0 && spot_price_ratio <= 1.0) {
        bail!("--spot-price-ratio must be above 0 and at most 1, got {spot_price_ratio}");
    }
    Ok(match catalog {
        "aws-us-east-1" => shipped::us_east_1().context("reading the shipped catalog")?,
        path => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading catalog {path}"))?;
            shipped::parse(&text).with_context(|| format!("catalog {path}"))?
        }
    })
}

fn disrupt_dry_run(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    catalog: &str,
    spot_price_ratio: f64,
    min_saving: f64,
    json: bool,
) -> anyhow::Result<()> {
    let pricing =
        rafter_actors::dry_run::Pricing { catalog: load_catalog(catalog, spot_price_ratio)?, spot_price_ratio };
    let settings = rafter::disruption::Settings { min_saving, ..rafter::disruption::Settings::default() };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let config = match &kubeconfig {
            Some(path) => rafter_actors::world::kubeconfig(path, context).await?,
            None => kube::Config::infer().await.context("no --kubeconfig, and no in-cluster or default kubeconfig")?,
        };
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        let decision = rafter_actors::dry_run::dry_run(&client, &pricing, settings, jiff::Timestamp::now()).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&decision).context("serialising the decision")?);
        } else {
            print!("{}", rafter_actors::dry_run::render(&decision));
        }
        Ok(())
    })
}

fn solve(file: &str, catalog: &str, spot_price_ratio: f64) -> anyhow::Result<()> {
    use rafter::scheduling::{input, solver};
    let specs = load_catalog(catalog, spot_price_ratio)?;
    let (name, text) = read_input(file)?;
    let problem = match input::read(&text, &specs, |spec, _zone| Some(spec.on_demand_price * spot_price_ratio)) {
        Ok(problem) => problem,
        Err(errors) => {
            for e in &errors {
                match e.line {
                    Some(line) => eprintln!("{name}:{line}: {e}"),
                    None => eprintln!("{name}: {e}"),
                }
            }
            bail!("{name}: {} problem(s); nothing was solved", errors.len())
        }
    };
    let start = std::time::Instant::now();
    let plan = solver::solve(&problem);
    let elapsed = start.elapsed();
    let json = serde_json::to_string_pretty(&plan).context("serialising the plan")?;
    println!("{json}");
    eprintln!(
        "solved {} pod(s): {} new node(s) at ${:.4}/h, {} on existing capacity, {} unplaced, in {:.1} ms",
        problem.pods.len(),
        plan.claims.len(),
        plan.price(),
        plan.placements.len(),
        plan.unplaced.len(),
        elapsed.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The AWS region: `--region`, else the SDK's default chain (AWS_REGION, profile).
async fn region(args: &RunArgs, needed_by: &str) -> anyhow::Result<String> {
    match args.region.clone() {
        Some(r) => Ok(r),
        None => aws_config::load_defaults(aws_config::BehaviorVersion::latest())
            .await
            .region()
            .map(|r| r.to_string())
            .with_context(|| format!("{needed_by} needs a region: set --region or AWS_REGION")),
    }
}

fn run(args: RunArgs, json: bool) -> anyhow::Result<()> {
    let problems = args.validate();
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!("invalid configuration: {}", lines.join("; "));
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty());
        let mut guard = telemetry::init(json, otlp.as_deref())?;
        let client = connect(&args).await?;
        let lease_client = connect(&args).await?;
        preflight(&client).await?;
        let cloud: std::sync::Arc<dyn rafter::cloud::CloudProvider> = match args.cloud {
            config::CloudKind::Fake => {
                std::sync::Arc::new(rafter::cloud::fake::FakeCloud::new(rafter::cloud::fake::FakeConfig {
                    cluster: args.cluster_name.clone(),
                    ..Default::default()
                })?)
            }
            config::CloudKind::Aws => {
                let region = region(&args, "--cloud aws").await?;
                let mut aws = rafter_aws::AwsConfig::new(args.cluster_name.clone(), region);
                aws.endpoint = args.aws_endpoint.clone();
                aws.cluster_endpoint = args.cluster_endpoint.clone();
                aws.cluster_ca = args.cluster_ca_bundle.clone();
                aws.kubernetes_version = args.kubernetes_version.clone();
                let classes = std::sync::Arc::new(rafter_actors::nodeclass::WatchedNodeClasses::start(client.clone()));
                std::sync::Arc::new(rafter_aws::AwsCloud::new(aws, classes).await)
            }
        };
        let queue: Option<std::sync::Arc<dyn rafter::interruption::queue::MessageQueue>> =
            match &args.interruption_queue {
                None => None,
                Some(queue) => {
                    let region = region(&args, "--interruption-queue").await?;
                    let mut config = rafter::interruption::queue::QueueConfig::new(queue.clone(), region);
                    config.endpoint = args.aws_endpoint.clone();
                    let sqs = rafter_aws::sqs::SqsQueue::connect(config).await?;
                    tracing::info!(queue = %sqs.url(), "consuming interruption events");
                    Some(std::sync::Arc::new(sqs))
                }
            };
        let identity = args
            .identity
            .clone()
            .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| format!("rafter-{}", std::process::id())));
        let replica = rafter_actors::controller::Replica::start(rafter_actors::controller::ReplicaArgs {
            client,
            lease_client,
            cloud,
            config: args.controller_config(identity),
            clock: None,
            metrics_addr: Some(args.metrics_addr),
            queue,
        })
        .await?;
        tracing::info!(identity = %replica.identity(), metrics = ?replica.metrics_addr, "controller started");
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        enum Ended {
            Signal,
            Stopped,
        }
        let mut replica = replica;
        let ended = tokio::select! {
            _ = tokio::signal::ctrl_c() => Ended::Signal,
            _ = terminate.recv() => Ended::Signal,
            _ = replica.stopped() => Ended::Stopped,
        };
        let result = match ended {
            Ended::Signal => {
                replica.shutdown().await;
                Ok(())
            }
            Ended::Stopped => replica.wait().await.context("the controller stopped"),
        };
        guard.shutdown();
        result
    })
}

async fn connect(args: &RunArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => rafter_actors::world::kubeconfig(path, args.context.clone()).await?,
        None => {
            let mut config = kube::Config::infer()
                .await
                .context("no kubeconfig given and no in-cluster configuration found; pass --kubeconfig")?;
            // Rafter retries on its own terms (evictions refused by a PDB answer 429).
            config.default_retry = false;
            config
        }
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn preflight(client: &kube::Client) -> anyhow::Result<()> {
    for (group_version, resources) in
        [("karpenter.sh/v1", &["nodepools", "nodeclaims"][..]), ("karpenter.k8s.aws/v1", &["ec2nodeclasses"][..])]
    {
        let list = client.list_api_group_resources(group_version).await.with_context(|| {
            format!(
                "{group_version} is not served; install the CRDs with `rafter crds | kubectl apply --server-side -f -`"
            )
        })?;
        for resource in resources {
            if !list.resources.iter().any(|r| r.name == *resource) {
                bail!(
                    "{group_version} does not serve {resource}; install the CRDs with `rafter crds | kubectl apply --server-side -f -`"
                );
            }
        }
    }
    Ok(())
}
