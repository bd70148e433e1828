//! Simple-query results: column names, rows of text values, and typed accessors.
//!
//! A WAL sender only takes the simple query protocol, whose results are text. [`Row`] gives
//! the values back as bytes, strings or any `FromStr` type, with errors that name the column.

use std::str::FromStr;

use bytes::Bytes;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;

use super::connection::{Connection, data_row_values};
use super::error::{Error, ServerError};
use super::frame::Frame;
use super::frame::message_name;

/// One result set of a simple query.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// The CommandComplete tag (`SELECT 1`, `IDENTIFY_SYSTEM`, ...).
    pub tag: String,
}

/// One row: text-format values, `None` for NULL.
#[derive(Debug, Clone)]
pub struct Row {
    columns: std::sync::Arc<[String]>,
    values: Vec<Option<Bytes>>,
}

impl Row {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn column_name(&self, index: usize) -> String {
        self.columns
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("#{index}"))
    }

    /// The raw bytes of a value; `None` for NULL. A missing column is an error.
    pub fn bytes(&self, index: usize) -> Result<Option<&Bytes>, RowError> {
        self.values
            .get(index)
            .map(Option::as_ref)
            .ok_or(RowError::MissingColumn {
                index,
                count: self.values.len(),
            })
    }

    /// A value as text; `None` for NULL.
    pub fn text(&self, index: usize) -> Result<Option<&str>, RowError> {
        match self.bytes(index)? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| RowError::NotUtf8 {
                    column: self.column_name(index),
                }),
        }
    }

    /// A value parsed from its text form; `None` for NULL.
    pub fn parse<T: FromStr>(&self, index: usize) -> Result<Option<T>, RowError>
    where
        T::Err: std::fmt::Display,
    {
        match self.text(index)? {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|e: T::Err| RowError::Invalid {
                    column: self.column_name(index),
                    value: text.to_string(),
                    reason: e.to_string(),
                }),
        }
    }

    /// A value that must not be NULL, parsed from its text form.
    pub fn required<T: FromStr>(&self, index: usize) -> Result<T, RowError>
    where
        T::Err: std::fmt::Display,
    {
        self.parse(index)?.ok_or_else(|| RowError::Null {
            column: self.column_name(index),
        })
    }
}

/// A value in a result could not be read as the caller needs it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RowError {
    #[error("column {index} missing: the row has {count} columns")]
    MissingColumn { index: usize, count: usize },
    #[error("column {column} is NULL")]
    Null { column: String },
    #[error("column {column} is not valid UTF-8")]
    NotUtf8 { column: String },
    #[error("column {column} has value {value:?}: {reason}")]
    Invalid {
        column: String,
        value: String,
        reason: String,
    },
}

impl Connection {
    /// Runs a simple query and collects every result set it returns. An error from the
    /// server is returned after the server is ready again, so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>, Error> {
        self.send_query(sql).await?;
        self.collect_results().await
    }

    /// Reads result sets until ReadyForQuery (after a command was sent).
    pub(crate) async fn collect_results(&mut self) -> Result<Vec<QueryResult>, Error> {
        let mut results = Vec::new();
        let mut current: Option<(std::sync::Arc<[String]>, Vec<Row>)> = None;
        let mut error: Option<ServerError> = None;
        loop {
            let message = match self.recv().await? {
                Frame::Message(m) => m,
                other => {
                    return Err(
                        self.protocol_error(format!("unexpected {other:?} in a query result"))
                    );
                }
            };
            match message {
                Message::RowDescription(body) => {
                    let mut names = Vec::new();
                    let mut fields = body.fields();
                    while let Some(field) = fields
                        .next()
                        .map_err(|e| self.protocol_error(format!("bad RowDescription: {e}")))?
                    {
                        names.push(field.name().to_string());
                    }
                    current = Some((names.into(), Vec::new()));
                }
                Message::DataRow(body) => {
                    let values = data_row_values(&body)
                        .map_err(|e| self.protocol_error(format!("bad DataRow: {e}")))?;
                    let Some((columns, rows)) = current.as_mut() else {
                        return Err(self.protocol_error("DataRow without RowDescription"));
                    };
                    rows.push(Row {
                        columns: columns.clone(),
                        values,
                    });
                }
                Message::CommandComplete(body) => {
                    let tag = body.tag().unwrap_or_default().to_string();
                    let (columns, rows) = current.take().unwrap_or_default();
                    results.push(QueryResult {
                        columns: columns.to_vec(),
                        rows,
                        tag,
                    });
                }
                Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => {
                    error = Some(ServerError::from_fields(body.fields()));
                }
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(Error::Server(e)),
                        None => Ok(results),
                    };
                }
                other => {
                    return Err(self.protocol_error(format!(
                        "unexpected {} in a query result",
                        message_name(&other)
                    )));
                }
            }
        }
    }
}
