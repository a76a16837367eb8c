//! Producer ids and (later) transactions: InitProducerId hands an idempotent producer a
//! fresh producer id at epoch 0, as Kafka does for producers without a transactional id.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::{ProducerId, RequestHeader};

use crate::broker::Broker;

pub async fn init_producer_id(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let fail = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        return fail(ResponseError::InvalidRequest);
    }
    // A producer without a transactional id always gets a new id (also when it asks for an
    // epoch bump after an error, KIP-360): nothing can fence it, so nothing is lost.
    let broker = broker.clone();
    let allocated = tokio::task::spawn_blocking(move || broker.allocate_producer_id()).await;
    match allocated {
        Ok(Ok(producer_id)) => {
            InitProducerIdResponse::default().with_producer_id(ProducerId(producer_id)).with_producer_epoch(0)
        }
        Ok(Err(err)) => {
            tracing::error!(error = %err.message, "cannot allocate a producer id");
            fail(ResponseError::CoordinatorNotAvailable)
        }
        Err(join) => {
            tracing::error!(%join, "producer id allocation panicked");
            fail(ResponseError::UnknownServerError)
        }
    }
}
