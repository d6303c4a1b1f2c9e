//! Ports: the traits the actors need from the outside world, shaped after the
//! Azure services so embedded and Azure adapters are interchangeable, with
//! in-memory versions for unit tests.

pub mod blob;
pub mod hub;
pub mod memory;
pub mod source;
pub mod state;

pub use blob::{BlobError, BlobProperties, BlobStore, ETag, PutCondition, validate_blob_name};
pub use hub::{
    EventData, Hub, HubError, PartitionProperties, PartitionReceiver, PublishTarget, ReceivedEvent,
    StartPosition, Unpublished, partition_for_key, publish_in_order,
};
pub use source::{DeadLetter, Page, Source, SourceCursor, SourceError, SourceRecord};
pub use state::{StateError, StateStore, Versioned, checkpoint_name, ownership_name};
