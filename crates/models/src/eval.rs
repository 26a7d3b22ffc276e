//! Evaluation of alert events against incident labels (alerts-v1).
