//! The keeper: this processor's member key and partition leases in the lease bucket, kept on a
//! task of its own so renewals go on while a generation recovers or drains.
//!
//! Owns: the member key `<input.stream>.member.<instance>` (its presence is this processor's
//! membership: others count it in the shares), one [`Lease`] per owned partition
//! (`<input.stream>.partition.<p>`), renewing all of them every TTL/3, a look at the bucket's
//! keys after each renewal (the [`View`] the plans are made from), and taking and giving back
//! partitions when told.
//!
//! Must never: keep a partition whose renewal failed (it is dropped and reported lost at once;
//! its fence is already closed), or give a lease back while a generation may still publish
//! for it (the caller gives back only between generations).
//!
//! Invariants: the view is at most one round old; a member key that expired while this process
//! was paused is written again at the next round (the process rejoins).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::assignment::View;
use crate::lease::{Fence, Holder, Lease, LeaseError, LeaseSettings};

/// The key of a processor's membership.
pub fn member_key(stream: &str, instance: &str) -> String {
    format!("{stream}.member.{instance}")
}

/// The key of a partition's lease.
pub fn partition_key(stream: &str, partition: u32) -> String {
    format!("{stream}.partition.{partition}")
}

/// A partition just taken: what fences it, and its epoch (the revision it was taken at).
#[derive(Clone, Debug)]
pub struct Taken {
    pub partition: u32,
    pub fence: Fence,
    pub epoch: u64,
}

enum Command {
    Take(Vec<u32>, oneshot::Sender<Vec<Taken>>),
    Release(Vec<u32>, oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
}

/// The running keeper, as the cluster loop sees it.
pub struct Keeper {
    commands: mpsc::Sender<Command>,
    /// The latest look at the bucket (none before the first).
    pub view: watch::Receiver<Option<View>>,
    /// Partitions whose lease was lost while held (cleared for a partition taken again).
    pub lost: watch::Receiver<BTreeSet<u32>>,
}

struct State {
    store: kv::Store,
    settings: LeaseSettings,
    holder: Holder,
    partitions: u32,
    member: Lease,
    held: BTreeMap<u32, Lease>,
    view: watch::Sender<Option<View>>,
    lost: watch::Sender<BTreeSet<u32>>,
}

impl Keeper {
    /// Registers this processor (its member key) and starts renewing.
    pub async fn start(
        store: kv::Store,
        settings: LeaseSettings,
        holder: Holder,
        partitions: u32,
    ) -> Result<Keeper, LeaseError> {
        let member = register(&store, &settings, &holder).await?;
        let (view_sender, view) = watch::channel(None);
        let (lost_sender, lost) = watch::channel(BTreeSet::new());
        let (commands, receiver) = mpsc::channel(4);
        let mut state = State {
            store,
            settings,
            holder,
            partitions,
            member,
            held: BTreeMap::new(),
            view: view_sender,
            lost: lost_sender,
        };
        state.look().await;
        tokio::spawn(state.run(receiver));
        Ok(Keeper {
            commands,
            view,
            lost,
        })
    }

    /// Takes those of `partitions` nobody holds; returns the ones taken.
    pub async fn take(&self, partitions: Vec<u32>) -> Vec<Taken> {
        let (reply, taken) = oneshot::channel();
        if self
            .commands
            .send(Command::Take(partitions, reply))
            .await
            .is_err()
        {
            return Vec::new();
        }
        taken.await.unwrap_or_default()
    }

    /// Gives `partitions` back (their generation has ended).
    pub async fn release(&self, partitions: Vec<u32>) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Release(partitions, reply))
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// Gives every partition back, removes the member key, and stops renewing.
    pub async fn leave(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Leave(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Writes the member key (a fresh instance id: nobody else writes it).
async fn register(
    store: &kv::Store,
    settings: &LeaseSettings,
    holder: &Holder,
) -> Result<Lease, LeaseError> {
    let member_settings = LeaseSettings {
        key: member_key(&settings.key, &holder.instance),
        ..settings.clone()
    };
    Lease::try_take(store.clone(), member_settings.clone(), holder.clone())
        .await?
        .ok_or_else(|| LeaseError::Bucket {
            bucket: settings.bucket.clone(),
            message: format!("the member key {} is already written", member_settings.key),
        })
}

impl State {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut timer = tokio::time::interval(self.settings.ttl / 3);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            tokio::select! {
                _ = timer.tick() => {
                    self.renew().await;
                    self.look().await;
                }
                command = commands.recv() => match command {
                    Some(Command::Take(partitions, reply)) => {
                        let taken = self.take(partitions).await;
                        self.look().await;
                        let _ = reply.send(taken);
                    }
                    Some(Command::Release(partitions, reply)) => {
                        for partition in partitions {
                            if let Some(lease) = self.held.remove(&partition) {
                                lease.release().await;
                            }
                        }
                        self.look().await;
                        let _ = reply.send(());
                    }
                    Some(Command::Leave(reply)) => {
                        for (_, lease) in std::mem::take(&mut self.held) {
                            lease.release().await;
                        }
                        self.member.release().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                }
            }
        }
    }

    /// Renews the member key and every held lease; a lost lease is dropped and reported.
    async fn renew(&mut self) {
        if let Err(error) = self.member.renew().await {
            tracing::warn!(%error, "this processor's member key was lost; registering again");
            match register(&self.store, &self.settings, &self.holder).await {
                Ok(member) => self.member = member,
                Err(error) => tracing::warn!(%error, "registering again failed; retrying"),
            }
        }
        let mut lost = Vec::new();
        for (partition, lease) in &mut self.held {
            if let Err(error) = lease.renew().await {
                tracing::error!(partition, %error, "partition lease lost; its generation stops");
                lost.push(*partition);
            }
        }
        if !lost.is_empty() {
            for partition in &lost {
                self.held.remove(partition);
            }
            self.lost.send_modify(|set| set.extend(lost));
        }
    }

    async fn take(&mut self, partitions: Vec<u32>) -> Vec<Taken> {
        let mut taken = Vec::new();
        for partition in partitions {
            if self.held.contains_key(&partition) || partition >= self.partitions {
                continue;
            }
            let settings = LeaseSettings {
                key: partition_key(&self.settings.key, partition),
                ..self.settings.clone()
            };
            match Lease::try_take(self.store.clone(), settings, self.holder.clone()).await {
                Ok(Some(lease)) => {
                    taken.push(Taken {
                        partition,
                        fence: lease.fence(),
                        epoch: lease.epoch(),
                    });
                    self.held.insert(partition, lease);
                    self.lost.send_modify(|set| {
                        set.remove(&partition);
                    });
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(partition, %error, "taking a partition failed"),
            }
        }
        taken
    }

    /// Reads the bucket's live keys of these streams into the view.
    async fn look(&mut self) {
        match tokio::time::timeout(self.look_timeout(), self.scan()).await {
            Ok(Ok(view)) => {
                self.view.send_replace(Some(view));
            }
            Ok(Err(error)) => tracing::warn!(%error, "reading the lease bucket failed"),
            Err(_) => tracing::warn!("reading the lease bucket timed out"),
        }
    }

    fn look_timeout(&self) -> Duration {
        self.settings.ttl / 3
    }

    async fn scan(&self) -> Result<View, String> {
        let members_prefix = format!("{}.member.", self.settings.key);
        let partitions_prefix = format!("{}.partition.", self.settings.key);
        let mut keys = self.store.keys().await.map_err(|e| e.to_string())?;
        let mut view = View::default();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(instance) = key.strip_prefix(&members_prefix) {
                view.members.push(instance.to_string());
            } else if let Some(partition) = key.strip_prefix(&partitions_prefix) {
                if let Ok(partition) = partition.parse::<u32>() {
                    view.held.insert(partition);
                }
            }
        }
        view.members.sort();
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_streams_and_what_is_held() {
        assert_eq!(
            member_key("CREDITFLOW_IN", "ab12"),
            "CREDITFLOW_IN.member.ab12"
        );
        assert_eq!(
            partition_key("CREDITFLOW_IN", 7),
            "CREDITFLOW_IN.partition.7"
        );
    }
}
