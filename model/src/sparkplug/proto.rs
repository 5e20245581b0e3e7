//! The Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload`), as far as MaintAInPro reads
//! it, declared with prost's derive macros instead of generated from the `.proto` file.
//!
//! Field numbers and types follow the Sparkplug 3.0 specification. The fields left out
//! (metric metadata, data set and template structure) are skipped by the decoder as unknown
//! fields; data sets, templates and extensions are kept as opaque bytes so that a metric
//! carrying one is recognised, reported and skipped rather than misread.

/// One Sparkplug B message body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch at which the message was built.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0 to 255, wrapping; every message of an edge node but its death carries one.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// One metric of a payload: named in births, often only aliased in data messages.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the Unix epoch at which the value was sampled.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] code; required in births, optional afterwards.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
    pub value: Option<MetricValue>,
}

/// The value of a metric, by the protobuf field that carries it.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8, Int16, Int32, UInt8, UInt16 (and UInt32 from some publishers).
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64, UInt32, UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
    /// A data set, kept as its encoded bytes.
    #[prost(bytes = "vec", tag = "17")]
    DataSet(Vec<u8>),
    /// A template instance, kept as its encoded bytes.
    #[prost(bytes = "vec", tag = "18")]
    Template(Vec<u8>),
    #[prost(bytes = "vec", tag = "19")]
    Extension(Vec<u8>),
}

/// Properties of a metric; MaintAInPro reads the `Quality` property.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyValueKind", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub value: Option<PropertyValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueKind {
    #[prost(uint32, tag = "3")]
    Int(u32),
    #[prost(uint64, tag = "4")]
    Long(u64),
    #[prost(float, tag = "5")]
    Float(f32),
    #[prost(double, tag = "6")]
    Double(f64),
    #[prost(bool, tag = "7")]
    Boolean(bool),
    #[prost(string, tag = "8")]
    String(String),
    #[prost(bytes = "vec", tag = "9")]
    PropertySet(Vec<u8>),
    #[prost(bytes = "vec", tag = "10")]
    PropertySets(Vec<u8>),
    #[prost(bytes = "vec", tag = "11")]
    Extension(Vec<u8>),
}

/// The Sparkplug B data type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DataType {
    Unknown = 0,
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
    Uuid = 15,
    DataSet = 16,
    Bytes = 17,
    File = 18,
    Template = 19,
}

impl DataType {
    /// The type of a code; codes from 20 up (property sets, arrays) are all [`DataType::Unknown`]
    /// here, which MaintAInPro does not read.
    pub fn from_code(code: u32) -> Self {
        use DataType::*;
        match code {
            1 => Int8,
            2 => Int16,
            3 => Int32,
            4 => Int64,
            5 => UInt8,
            6 => UInt16,
            7 => UInt32,
            8 => UInt64,
            9 => Float,
            10 => Double,
            11 => Boolean,
            12 => String,
            13 => DateTime,
            14 => Text,
            15 => Uuid,
            16 => DataSet,
            17 => Bytes,
            18 => File,
            19 => Template,
            _ => Unknown,
        }
    }

    pub fn code(self) -> u32 {
        self as u32
    }

    /// Whether a reading can carry a value of this type (numbers and booleans).
    pub fn is_numeric(self) -> bool {
        use DataType::*;
        matches!(
            self,
            Int8 | Int16
                | Int32
                | Int64
                | UInt8
                | UInt16
                | UInt32
                | UInt64
                | Float
                | Double
                | Boolean
        )
    }
}

impl Metric {
    /// A named metric with a value, as births and simple publishers send it.
    pub fn new(name: &str, datatype: DataType, value: MetricValue) -> Self {
        Self {
            name: Some(name.to_owned()),
            datatype: Some(datatype.code()),
            value: Some(value),
            ..Self::default()
        }
    }

    pub fn with_alias(mut self, alias: u64) -> Self {
        self.alias = Some(alias);
        self
    }

    pub fn at(mut self, timestamp_ms: u64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }

    /// The same metric by alias only, as data messages after a birth send it.
    pub fn aliased(alias: u64, value: MetricValue) -> Self {
        Self {
            alias: Some(alias),
            value: Some(value),
            ..Self::default()
        }
    }
}
