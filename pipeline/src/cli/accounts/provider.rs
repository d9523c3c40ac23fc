//! `accounts check` and `accounts products`: calls to the provider with each account's own
//! credentials, outside the stages (their caps and breakers are the stages' own); neither
//! buys anything.

use super::render::table;
use super::AccountsCliError;
use crate::cli::CliError;
use crate::provider::accounts::{Account, Accounts};
use crate::provider::{BalanceOutcome, Product, ProductsOutcome};
use crate::znet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// The accounts of `file` to call: all of them, or `name`'s.
fn chosen(file: &Path, name: Option<&str>) -> Result<Vec<Arc<Account>>, CliError> {
    let accounts = Accounts::load(file, znet::connect)?;
    let all = accounts.all();
    match name {
        None => Ok(all),
        Some(name) => match accounts.get(name) {
            Some(account) => Ok(vec![Arc::clone(account)]),
            None => Err(AccountsCliError::Unknown {
                name: name.to_owned(),
                file: file.display().to_string(),
                known: all
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into()),
        },
    }
}

/// What one account answered to the balance call: `ok`, `account_problem` (credentials,
/// IP whitelist, API permission, base URL) or `no_answer` (unreachable, timeout, 5xx, HTML).
fn class(outcome: &BalanceOutcome) -> &'static str {
    match outcome {
        BalanceOutcome::Balance { .. } => "ok",
        BalanceOutcome::AccountProblem { .. } => "account_problem",
        BalanceOutcome::Transient { .. } => "no_answer",
    }
}

pub(super) async fn check(name: Option<&str>, file: &Path) -> Result<ExitCode, CliError> {
    let accounts = chosen(file, name)?;
    let outcomes = futures::future::join_all(accounts.iter().map(|a| a.provider.balance())).await;
    let results: Vec<(&str, BalanceOutcome)> = accounts
        .iter()
        .map(|a| a.id.as_str())
        .zip(outcomes)
        .collect();
    print!("{}", check_table(&results));
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, outcome)| !matches!(outcome, BalanceOutcome::Balance { .. }))
        .map(|(id, outcome)| format!("{id} ({})", class(outcome).replace('_', " ")))
        .collect();
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(AccountsCliError::CheckFailed {
        failed: failed.len(),
        total: results.len(),
        which: failed.join(", "),
    }
    .into())
}

/// One line per account: its id, the answer's class, the balance, and what went wrong.
pub(super) fn check_table(results: &[(&str, BalanceOutcome)]) -> String {
    let rows: Vec<[String; 4]> = results
        .iter()
        .map(|(id, outcome)| {
            let (balance, detail) = match outcome {
                BalanceOutcome::Balance { balance, debt } => (
                    balance.clone(),
                    debt.as_ref()
                        .map(|d| format!("debt {d}"))
                        .unwrap_or_default(),
                ),
                BalanceOutcome::AccountProblem { detail }
                | BalanceOutcome::Transient { detail } => ("-".to_owned(), detail.clone()),
            };
            [(*id).to_owned(), class(outcome).to_owned(), balance, detail]
        })
        .collect();
    table(&["ACCOUNT", "RESULT", "BALANCE", "DETAIL"], &rows)
}

pub(super) async fn products(name: &str, file: &Path, json: bool) -> Result<ExitCode, CliError> {
    let account = chosen(file, Some(name))?.remove(0);
    let (products, skipped) = match account.provider.products().await {
        ProductsOutcome::Products { products, skipped } => (products, skipped),
        ProductsOutcome::AccountProblem { detail } => {
            return Err(products_failed(name, "account problem", detail))
        }
        ProductsOutcome::Transient { detail } => {
            return Err(products_failed(name, "no answer", detail))
        }
    };
    if json {
        println!("{}", products_json(&products));
    } else {
        print!("{}", products_table(&products));
    }
    if skipped > 0 {
        eprintln!("note: {skipped} catalog entries without oyun_bilgi_id or kupur were left out");
    }
    Ok(ExitCode::SUCCESS)
}

fn products_failed(account: &str, class: &'static str, detail: String) -> CliError {
    AccountsCliError::Products {
        account: account.to_owned(),
        class,
        detail,
    }
    .into()
}

/// What an order's `product` holds to buy it, as `k=v` pairs.
fn product_params(p: &Product) -> String {
    p.product
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn products_table(products: &[Product]) -> String {
    let rows: Vec<[String; 5]> = products
        .iter()
        .map(|p| {
            [
                product_params(p),
                p.price.clone().unwrap_or_else(|| "-".into()),
                p.name.clone(),
                p.group.clone(),
                p.id.clone(),
            ]
        })
        .collect();
    table(&["PRODUCT", "PRICE", "NAME", "GROUP", "ID"], &rows)
}

/// The products as a JSON array; each `product` object is what an `orders.created` event's
/// `product` holds to buy it.
pub(super) fn products_json(products: &[Product]) -> String {
    let list: Vec<serde_json::Value> = products
        .iter()
        .map(|p| {
            serde_json::json!({
                "id": p.id, "name": p.name, "group": p.group, "price": p.price,
                "product": p.product,
            })
        })
        .collect();
    serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_table_names_the_class_and_never_more() {
        let text = check_table(&[
            (
                "znet-main",
                BalanceOutcome::Balance {
                    balance: "1500.00".into(),
                    debt: None,
                },
            ),
            (
                "znet-b",
                BalanceOutcome::AccountProblem {
                    detail: "empty answer".into(),
                },
            ),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ACCOUNT    RESULT           BALANCE  DETAIL");
        assert_eq!(lines[1], "znet-main  ok               1500.00");
        assert_eq!(
            lines[2],
            "znet-b     account_problem  -        empty answer"
        );
    }

    #[test]
    fn products_show_what_an_order_names() {
        let p = Product {
            id: "1".into(),
            name: "Steam 25 TL".into(),
            group: "Steam".into(),
            price: Some("24.25".into()),
            product: [("oyun", "412"), ("kupur", "25")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        let text = products_table(std::slice::from_ref(&p));
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("kupur=25 oyun=412  24.25  Steam 25 TL"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&products_json(&[p])).unwrap();
        assert_eq!(json[0]["product"]["oyun"], "412");
        assert_eq!(json[0]["price"], "24.25");
    }
}
