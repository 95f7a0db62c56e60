//! Where an order goes after its 201: its id ([`snowflake`], minted under a
//! leased worker number, [`lease`]), its entry in the item's order log
//! ([`order_log`]), and the [`persister`] that moves the log into SQL
//! ([`db`], which also holds the `sql` strategy's tables).

pub mod db;
pub mod lease;
pub mod order_log;
pub mod persister;
pub mod snowflake;
