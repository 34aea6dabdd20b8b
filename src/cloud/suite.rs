//! The conformance suite every cloud provider passes (the fake in unit tests, EC2 against moto).
