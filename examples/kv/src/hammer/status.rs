//! What a failed request means for the key it touched.

use tonic::{Code, Status};

/// Whether a failed write may have been applied anyway.
///
/// A server refuses before writing when the key is not its own, the range is
/// not writable, or the request is malformed: those writes certainly did not
/// happen. A timeout, an unavailable server or a broken connection say nothing
/// about the write: it may have been applied before the answer got lost.
pub fn write_may_have_applied(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unauthenticated
            | Code::ResourceExhausted
    )
}

/// The canonical upper-case name of a gRPC code, as in the gRPC spec, so that
/// reports read like server logs (`UNAVAILABLE`, not `Unavailable`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The status of a request the hammer gave up on after its timeout.
pub fn timed_out() -> Status {
    Status::deadline_exceeded("no answer within the hammer's request timeout")
}
