//! CI runner integrations: the GitHub Actions job hooks. The runner starts the job; vigil's
//! daemon watches it (see `daemon::jobs`), with per-step attribution (`run::steps`).

pub mod github;
