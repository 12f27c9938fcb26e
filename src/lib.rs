//! Fixtures shared by the workspace's integration tests and examples: small
//! reducers shaped like the JavaScript originals' test models.
