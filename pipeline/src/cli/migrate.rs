//! `orderflow migrate`: applies the database migrations that are not applied yet.

use super::CliError;
use crate::db::{self, DbConfig};
use std::process::ExitCode;

pub async fn run(db: DbConfig) -> Result<ExitCode, CliError> {
    let pool = db.connect().await?;
    db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
