//! `porchlight ctl`'s flags: the admin API client (`ctl/`).

use std::path::PathBuf;

/// Talk to a running node's admin API (`--admin-listen`).
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// The node's admin endpoint.
    #[arg(
        long,
        value_name = "URL",
        env = "PORCHLIGHT_ADMIN_URL",
        default_value = "http://127.0.0.1:9883"
    )]
    pub url: String,

    /// File holding the admin API's bearer token (the node's
    /// --admin-token-file).
    #[arg(long, value_name = "FILE", env = "PORCHLIGHT_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) to trust for an https:// --url (the
    /// admin endpoint's --admin-tls certificate); default: the public
    /// web roots.
    #[arg(long, value_name = "FILE", env = "PORCHLIGHT_ADMIN_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// The node: version, listeners, readiness, storage, counts.
    Status,
    /// Clients (sessions, connected or not).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// One session.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Subscriptions.
    #[command(subcommand)]
    Subscriptions(ListOnly),
    /// Retained messages.
    #[command(subcommand)]
    Retained(RetainedCommand),
    /// Tenants, their usage and limits.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// A summary of /metrics.
    Metrics,
}

/// Filters and paging of a list.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only client ids (topics, for retained) starting with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// At most this many (the API's pages hold up to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Start after this item (the `next` a previous page printed).
    #[arg(long)]
    pub after: Option<String>,
}

/// One client, by id, in a tenant.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    pub client_id: String,
    /// Its tenant (default: `default`).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientsCommand {
    List {
        #[command(flatten)]
        list: ListArgs,
        /// `connected` or `disconnected`.
        #[arg(long)]
        state: Option<String>,
    },
    Show(ClientArgs),
    /// Close its connection (DISCONNECT 0x98); its will is sent.
    Kick {
        #[command(flatten)]
        client: ClientArgs,
        /// End its session too (subscriptions and queued messages).
        #[arg(long)]
        discard_session: bool,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SessionsCommand {
    Show(ClientArgs),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ListOnly {
    List(ListArgs),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RetainedCommand {
    List(ListArgs),
    Delete {
        topic: String,
        /// Its tenant (default: `default`).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TenantsCommand {
    List,
    Show { tenant: String },
}
