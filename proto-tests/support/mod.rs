pub mod fake_walsender;
