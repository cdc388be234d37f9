//! The embedded paravirtual test guest image.
