//! gRPC calls with arbitrary bytes as the request message: how a test sends
//! truncated or garbage protobuf to a service, which no generated client can.

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Request, Status};

/// A codec that passes message bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len).to_vec()))
    }
}

/// Calls the unary method `path` (`/package.Service/Method`) at `addr` with
/// `message` as the request's bytes. The outer error is a failure to reach
/// the server; the inner result is the server's answer (its bytes, or its
/// status).
pub async fn call(
    addr: &str,
    path: &str,
    message: Vec<u8>,
) -> anyhow::Result<Result<Vec<u8>, Status>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = PathAndQuery::try_from(path.to_owned())?;
    Ok(grpc
        .unary(Request::new(message), path, RawCodec)
        .await
        .map(tonic::Response::into_inner))
}
