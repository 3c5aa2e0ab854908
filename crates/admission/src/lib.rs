//! `eks-admission`: the toleration controller. Pods the scheduler could not place get the virtual node toleration when policy allows.
