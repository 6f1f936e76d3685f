//! [`Secret`]: text that must not leave the process by accident (service-token secrets,
//! app tokens, client secrets). Its own module so every role can hold one without
//! depending on the store.

/// A secret (a service-token secret, a token, a client secret). Never printed by accident:
/// no `Debug`, no `Display`; call [`Secret::expose`] where it must leave the process.
pub struct Secret(String);

impl Secret {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}
