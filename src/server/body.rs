//! Response bodies the HTTP front builds itself (JSON errors, health);
//! everything else comes from the core.

pub use crate::fetch::{full, Body};
use http::{header, HeaderValue, Response, StatusCode};

pub fn json_response(status: StatusCode, json: String) -> Response<Body> {
    let mut resp = Response::new(full(json));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
