//! The burst policy: may this pod go to the cloud, and if not, why not. Pure: no I/O, no runtime.
