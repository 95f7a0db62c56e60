//! Where an order goes after its 201: its id ([`snowflake`], minted under a
//! leased worker number, [`lease`]), its entry in the item's order log
//! ([`order_log`]), the [`persister`] that moves the log into SQL ([`db`],
//! which also holds the `sql` strategy's tables), [`lookup`], which
//! finds an order by its id in either place, and [`moves`], the shape of the
//! lifecycle's moves (pay, cancel, expiry) on their way to SQL.

pub mod db;
pub mod lease;
pub mod lookup;
pub mod moves;
pub mod order_log;
pub mod persister;
pub mod snowflake;
