//! `eklet`: the virtual node manager. One virtual node per cloud subnet, and the life of every pod bound to one.
