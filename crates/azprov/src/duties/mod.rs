//! One module per duty. Each takes its inputs and `&dyn System` and returns an `Outcome`; duties never talk to
//! the platform (the report does).
