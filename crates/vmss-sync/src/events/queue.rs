//! The Storage Queue REST client (see below).
