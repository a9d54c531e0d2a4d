//! What an etcd failure means for the [`Store`](crate::Store) contract.
//!
//! etcd reports its own errors as gRPC statuses with fixed messages
//! (`etcdserver: ...`, see etcd's `api/v3rpc/rpctypes`); everything else is
//! the transport failing. [`Failure::classify`] turns both into the few cases
//! the backend handles differently; [`Failure::into_store_error`] is the
//! fallback mapping once an operation has dealt with the cases it expects.

use std::error::Error as _;
use std::fmt;

use tonic::Code;

use crate::StoreError;

/// An etcd request that did not succeed, by what the caller should do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `mvcc: required revision has been compacted`.
    Compacted,
    /// `mvcc: required revision is a future revision`.
    FutureRevision,
    /// `requested lease not found` (never granted, expired or revoked).
    LeaseNotFound,
    /// A transaction with more operations than the server's `--max-txn-ops`.
    TooManyOps,
    /// A request larger than the server's `--max-request-bytes`.
    RequestTooLarge,
    /// etcd rejected the request itself; retrying the same request cannot help.
    Rejected(String),
    /// etcd refused this client (authentication, permissions).
    Refused(String),
    /// etcd could not be reached or could not answer now (no leader,
    /// connection lost, timeout): worth retrying, but the request may have
    /// been applied.
    Unreachable(String),
    /// No connection could be made, so the request was never sent: worth
    /// retrying at once (on another endpoint), and certainly not applied.
    Unconnected(String),
}

impl Failure {
    pub(crate) fn classify(error: &etcd_client::Error) -> Failure {
        match error {
            etcd_client::Error::GRpcStatus(status) if caused_by_connect_error(status) => {
                Failure::Unconnected(causes(status.message(), std::error::Error::source(status)))
            }
            etcd_client::Error::GRpcStatus(status) => {
                let mut failure = Failure::from_status(status.code(), status.message());
                // A status made from a transport failure keeps its cause
                // ("Connection refused") in its sources.
                if let Failure::Unreachable(detail) = &mut failure {
                    *detail = causes(detail, std::error::Error::source(status));
                }
                failure
            }
            etcd_client::Error::TransportError(e) => Failure::Unreachable(causes("transport error", e.source())),
            etcd_client::Error::IoError(e) => Failure::Unreachable(format!("I/O error: {e}")),
            etcd_client::Error::LeaseKeepAliveError(message) if message.contains("not found") => Failure::LeaseNotFound,
            etcd_client::Error::InvalidArgs(message) => Failure::Rejected(message.clone()),
            etcd_client::Error::InvalidUri(e) => Failure::Rejected(format!("invalid endpoint URI: {e}")),
            other => Failure::Unreachable(other.to_string()),
        }
    }

    /// A gRPC status from etcd, by code and message.
    pub(crate) fn from_status(code: Code, message: &str) -> Failure {
        let detail = || format!("{message} ({code:?})");
        if message.contains("required revision has been compacted") {
            return Failure::Compacted;
        }
        if message.contains("required revision is a future revision") {
            return Failure::FutureRevision;
        }
        if message.contains("requested lease not found") {
            return Failure::LeaseNotFound;
        }
        if message.contains("too many operations in txn request") {
            return Failure::TooManyOps;
        }
        if message.contains("request is too large") {
            return Failure::RequestTooLarge;
        }
        match code {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::Unimplemented => {
                Failure::Rejected(detail())
            }
            Code::PermissionDenied | Code::Unauthenticated => Failure::Refused(detail()),
            _ => Failure::Unreachable(detail()),
        }
    }

    /// Worth retrying the same request later.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Failure::Unreachable(_) | Failure::Unconnected(_))
    }

    /// The generic mapping, with what the operator should check. `operation`
    /// names the request ("put /k"); `endpoints` the etcd endpoints in use.
    pub(crate) fn into_store_error(self, operation: &str, endpoints: &str) -> StoreError {
        match self {
            Failure::Unreachable(detail) | Failure::Unconnected(detail) => StoreError::Unavailable(format!(
                "etcd at {endpoints} did not complete {operation}: {detail}; check that etcd is running and \
                 reachable from this host and has a leader (etcdctl --endpoints {endpoints} endpoint health), \
                 and that --store names its client URLs"
            )),
            Failure::Refused(detail) => StoreError::Unavailable(format!(
                "etcd at {endpoints} refused {operation}: {detail}; meshplane connects without credentials, so \
                 etcd must not require authentication for its keys"
            )),
            Failure::TooManyOps => StoreError::Invalid(format!(
                "etcd at {endpoints} rejected {operation}: a batch is one transaction, which etcd's \
                 --max-txn-ops (default 128) limits to that many operations minus one; raise --max-txn-ops on \
                 every etcd member above the largest batch meshplane writes"
            )),
            Failure::RequestTooLarge => StoreError::Invalid(format!(
                "etcd at {endpoints} rejected {operation}: the request is larger than etcd's --max-request-bytes \
                 (default 1.5 MiB); raise it on every etcd member"
            )),
            Failure::Rejected(detail) => {
                StoreError::Invalid(format!("etcd at {endpoints} rejected {operation}: {detail}"))
            }
            // Operations that can meet these handle them before falling back here.
            Failure::Compacted | Failure::FutureRevision | Failure::LeaseNotFound => {
                StoreError::Invalid(format!("etcd at {endpoints} rejected {operation}: {self}"))
            }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Compacted => f.write_str("the requested revision has been compacted"),
            Failure::FutureRevision => f.write_str("the requested revision is in the future"),
            Failure::LeaseNotFound => f.write_str("the lease was not found"),
            Failure::TooManyOps => f.write_str("too many operations in one transaction"),
            Failure::RequestTooLarge => f.write_str("the request is too large"),
            Failure::Rejected(detail)
            | Failure::Refused(detail)
            | Failure::Unreachable(detail)
            | Failure::Unconnected(detail) => f.write_str(detail),
        }
    }
}

/// Whether tonic made this status from a failure to connect (the request was not sent).
fn caused_by_connect_error(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// `text` followed by the messages of `source` and its sources, each once:
/// the useful part of a transport error ("Connection refused") is its last.
fn causes(text: &str, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut text = text.to_owned();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_are_recognised_by_their_fixed_messages() {
        let cases = [
            (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted", Failure::Compacted),
            (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision", Failure::FutureRevision),
            (Code::NotFound, "etcdserver: requested lease not found", Failure::LeaseNotFound),
            (Code::InvalidArgument, "etcdserver: too many operations in txn request", Failure::TooManyOps),
            (Code::InvalidArgument, "etcdserver: request is too large", Failure::RequestTooLarge),
        ];
        for (code, message, expected) in cases {
            assert_eq!(Failure::from_status(code, message), expected, "{message}");
        }
    }

    #[test]
    fn other_statuses_by_code() {
        assert!(matches!(
            Failure::from_status(Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
            Failure::Rejected(m) if m.contains("duplicate key")
        ));
        assert!(matches!(
            Failure::from_status(Code::PermissionDenied, "etcdserver: permission denied"),
            Failure::Refused(_)
        ));
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Unknown, Code::Cancelled, Code::Internal] {
            let failure = Failure::from_status(code, "etcdserver: no leader");
            assert!(failure.is_transient(), "{code:?} is worth retrying");
        }
        assert!(!Failure::from_status(Code::InvalidArgument, "x").is_transient());
    }

    #[test]
    fn a_failure_to_connect_is_known_to_be_unsent_and_keeps_its_cause() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        match Failure::classify(&etcd_client::Error::GRpcStatus(status)) {
            Failure::Unconnected(detail) => assert!(detail.contains("Connection refused"), "{detail}"),
            other => panic!("expected Unconnected, got {other:?}"),
        }
        let reset = tonic::Status::unavailable("error reading a body from connection");
        assert!(
            matches!(Failure::classify(&etcd_client::Error::GRpcStatus(reset)), Failure::Unreachable(_)),
            "a failure after sending may have been applied"
        );
    }

    #[test]
    fn store_errors_tell_the_operator_what_to_check() {
        let endpoints = "127.0.0.1:2379";
        match Failure::Unreachable("connection refused".into()).into_store_error("put \"/k\"", endpoints) {
            StoreError::Unavailable(message) => {
                for part in ["127.0.0.1:2379", "put \"/k\"", "connection refused", "endpoint health", "--store"] {
                    assert!(message.contains(part), "{part:?} in {message}");
                }
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        match Failure::TooManyOps.into_store_error("a batch of 300 operations", endpoints) {
            StoreError::Invalid(message) => assert!(message.contains("--max-txn-ops"), "{message}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
}
