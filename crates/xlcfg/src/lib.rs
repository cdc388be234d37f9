//! The xl.cfg domain configuration language and the typed domain model.
