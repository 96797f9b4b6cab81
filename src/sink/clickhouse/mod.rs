pub mod rowbinary;
pub mod types;
