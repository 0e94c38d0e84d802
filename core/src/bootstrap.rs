//! Bringing a database to the state Tessera runs on: roles, the database itself, its grants and every
//! migration. `tessera up` and the test harness do this on the embedded cluster as its superuser; against a
//! server a DBA manages, the same steps are `tessera roles --print` (for the DBA) and `tessera migrate`.

use tokio_postgres::{Client, NoTls};

use crate::embedded::Endpoint;
use crate::migrate::{self, Applied, MigrateError};
use crate::module::Module;
use crate::roles::{self, OWNER, quote_ident};

/// The database `tessera up` creates on its embedded cluster.
pub const DATABASE: &str = "tessera";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("could not connect to {what}")]
    Connect {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("could not set up roles and database")]
    Setup(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// Connects and drives the connection on a background task.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

async fn connect_as(endpoint: &Endpoint, user: &str, dbname: &str) -> Result<Client, BootstrapError> {
    connect(&endpoint.pg_config(user, dbname))
        .await
        .map_err(|source| BootstrapError::Connect { what: format!("database {dbname} as {user}"), source })
}

/// Creates the roles and the database `dbname` (when missing), grants its rights and applies every pending
/// migration as the owner. Safe to run again.
pub async fn provision(
    endpoint: &Endpoint,
    superuser: &str,
    dbname: &str,
    modules: &[&dyn Module],
) -> Result<Vec<Applied>, BootstrapError> {
    let names: Vec<&str> = modules.iter().map(|m| m.name()).collect();
    let admin = connect_as(endpoint, superuser, "postgres").await?;
    admin.batch_execute(&roles::cluster_script(&names)).await?;
    let exists = admin.query_opt("select 1 from pg_database where datname = $1", &[&dbname]).await?.is_some();
    if !exists {
        admin
            .batch_execute(&format!("create database {} owner {}", quote_ident(dbname), quote_ident(OWNER)))
            .await?;
    }
    drop(admin);
    let admin = connect_as(endpoint, superuser, dbname).await?;
    admin.batch_execute(&roles::database_script()).await?;
    drop(admin);
    let mut owner = connect_as(endpoint, OWNER, dbname).await?;
    Ok(migrate::run(&mut owner, modules).await?)
}
