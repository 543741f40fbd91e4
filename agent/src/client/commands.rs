//! `why502 incidents`, `explain` and `status`: one request, one answer printed.

use std::time::SystemTime;

use serde_json::json;

use super::{
    print, print_json,
    render::{self, Style},
    watch, ApiClient, ClientError, IncidentQuery,
};
use crate::{
    cli::{ClientCommand, ExplainArgs, IncidentsArgs, StatusArgs},
    sinks::api::parse_since,
};

pub async fn run(command: ClientCommand) -> Result<(), ClientError> {
    match command {
        ClientCommand::Incidents(args) => incidents(args).await,
        ClientCommand::Explain(args) => explain(args).await,
        ClientCommand::Watch(args) => watch::watch(args).await,
        ClientCommand::Status(args) => status(args).await,
    }
}

async fn incidents(args: IncidentsArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(&args.api.socket);
    let query = IncidentQuery {
        since: args.since.clone(),
        upstream: args.upstream.clone(),
        proxy: args.proxy.clone(),
        limit: Some(usize::from(args.limit)),
    };
    let incidents = client.incidents(&query).await?;
    if args.api.json {
        return print_json(&json!({ "incidents": incidents }));
    }
    let style = Style::for_stdout();
    if incidents.is_empty() {
        // Validated by the argument parser already; an error here only drops the time.
        let since = args
            .since
            .as_deref()
            .and_then(|s| parse_since(s, SystemTime::now()).ok());
        let filter = render::NoIncidents {
            since,
            upstream: args.upstream.as_deref(),
            proxy: args.proxy.as_deref(),
        };
        return print(&filter.render(&style));
    }
    print(&render::incidents_table(&incidents, &style))
}

async fn explain(args: ExplainArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(&args.api.socket);
    let incident = match args.id {
        Some(id) => client.incident(id).await?,
        None => client.last_incident().await?,
    };
    if args.api.json {
        return print_json(&incident);
    }
    print(&render::explain(&incident, &Style::for_stdout()))
}

async fn status(args: StatusArgs) -> Result<(), ClientError> {
    let report = ApiClient::new(&args.api.socket).status().await?;
    if args.api.json {
        return print_json(&report);
    }
    print(&render::status(&report, &Style::for_stdout()))
}
